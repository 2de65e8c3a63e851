//! Runs OpenText's own client, pyxecm 3.7.0, against the in-process emulator
//! on both base paths (conformance/pyxecm_conformance.py).

use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyxecm_conformance_passes_on_both_base_paths() {
    let Ok(python) = std::env::var("XECM_PYXECM_PYTHON") else {
        panic!(
            "XECM_PYXECM_PYTHON is not set: point it at the python of a venv with pyxecm 3.7.0 \
             (see tests/otcs-emulator/README.md) or run tests/run.sh, which sets it"
        );
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/pyxecm_conformance.py");
    let emu = otcs_emulator::start(otcs_emulator::EmulatorConfig::default())
        .await
        .expect("emulator starts");
    for base_path in ["/cs/cs", "/otcs/cs.exe"] {
        let url = emu.base_url();
        let script = script.clone();
        let python = python.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .arg(url)
                .arg(base_path)
                .output()
        })
        .await
        .expect("join")
        .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{base_path}:\n{stdout}");
        assert!(
            out.status.success(),
            "pyxecm conformance failed on {base_path}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.lines().any(|l| l.trim() == "17 passed, 0 failed"),
            "{stdout}"
        );
    }
    emu.shutdown().await;
}
