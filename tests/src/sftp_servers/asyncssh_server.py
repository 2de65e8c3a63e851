"""An asyncssh SFTP server for the interop tests.

Usage: asyncssh_server.py HOST_KEY AUTHORIZED_KEYS CHROOT PORT

Serves SFTP (asyncssh's own server, whose file handles are binary
counters) on 127.0.0.1:PORT, public-key authentication only, with CHROOT
as "/". Runs until killed.
"""

import asyncio
import sys

import asyncssh


def main() -> None:
    host_key, authorized_keys, chroot, port = sys.argv[1:5]

    class ChrootSftp(asyncssh.SFTPServer):
        def __init__(self, chan):
            super().__init__(chan, chroot=chroot.encode())

    async def serve() -> None:
        server = await asyncssh.listen(
            "127.0.0.1",
            int(port),
            server_host_keys=[host_key],
            authorized_client_keys=authorized_keys,
            sftp_factory=ChrootSftp,
            allow_scp=False,
            password_auth=False,
            kbdint_auth=False,
        )
        print("listening", flush=True)
        await server.wait_closed()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
