//! The webhook verifier and callback parser (`domain::webhook`), with the
//! input as the body of a correctly signed request and as a whole Function
//! URL event. Properties: a signed, fresh request is refused only for its
//! body (never 401); what is accepted is exactly the contract's callback;
//! changing one bit of an accepted body, the key or the timestamp refuses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use xecm_core::domain::webhook::{
    ApprovalCallback, FunctionUrlEvent, REPLAY_WINDOW_SECS, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    WebhookPolicy, WebhookRequest, sign, verify,
};

const KEY: &str = "fuzz-webhook-key";
const NOW: i64 = 1_800_000_000;

fn signed(body: &[u8], key: &str, ts: i64) -> WebhookRequest {
    WebhookRequest {
        method: "POST".into(),
        path: "/".into(),
        headers: [
            ("content-type".to_owned(), "application/json".to_owned()),
            (TIMESTAMP_HEADER.to_owned(), ts.to_string()),
            (SIGNATURE_HEADER.to_owned(), sign(key.as_bytes(), ts, body)),
        ]
        .into_iter()
        .collect(),
        body: body.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let policy = WebhookPolicy::default();
    let keys = [SecretString::from(KEY.to_owned())];
    match verify(&policy, &signed(data, KEY, NOW), &keys, NOW) {
        Ok(cb) => {
            let parsed: ApprovalCallback =
                serde_json::from_slice(data).expect("an accepted body parses as a callback");
            assert_eq!(parsed, cb);
            assert!(cb.node_id > 0 && cb.category_id > 0);
            let mut flipped = data.to_vec();
            let i = data.len() / 2;
            flipped[i] ^= 1;
            let mut req = signed(data, KEY, NOW);
            req.body = flipped;
            assert_eq!(
                verify(&policy, &req, &keys, NOW).map_err(|r| r.status),
                Err(401)
            );
            let other = signed(data, "another-key", NOW);
            assert_eq!(
                verify(&policy, &other, &keys, NOW).map_err(|r| r.status),
                Err(401)
            );
            let stale = signed(data, KEY, NOW - REPLAY_WINDOW_SECS - 1);
            assert_eq!(
                verify(&policy, &stale, &keys, NOW).map_err(|r| r.status),
                Err(401)
            );
        }
        Err(r) => {
            assert_ne!(
                r.status, 401,
                "a signed, fresh request refused as unauthenticated: {r}"
            );
            assert!((400..500).contains(&r.status), "{r}");
            assert!(!r.reason.is_empty());
        }
    }
    // The same bytes as a whole Function URL event: whatever it holds,
    // verification answers, and a random signature is never accepted.
    if let Ok(ev) = serde_json::from_slice::<FunctionUrlEvent>(data) {
        if let Ok(req) = WebhookRequest::from_function_url(ev, &policy) {
            let expected = req
                .headers
                .get(TIMESTAMP_HEADER)
                .and_then(|t| t.trim().parse::<i64>().ok())
                .map(|ts| sign(KEY.as_bytes(), ts, &req.body));
            let presented = req
                .headers
                .get(SIGNATURE_HEADER)
                .map(|s| s.trim().to_owned());
            if verify(&policy, &req, &keys, NOW).is_ok() {
                assert_eq!(presented, expected, "accepted without the right signature");
            }
        }
    }
});
