"""A paramiko SFTP server whose rename is a plain POSIX rename(2).

Usage: paramiko_server.py HOST_KEY AUTHORIZED_KEYS ROOT PORT

The kind of server some partners run: a few lines over paramiko's
SFTPServerInterface where "rename" calls os.rename, which silently
replaces an existing target (OpenSSH's sftp-server refuses instead).
Public-key authentication only; ROOT is served as "/". Runs until killed.
"""

import os
import socket
import sys
import threading

import paramiko
from paramiko import SFTPAttributes, SFTPHandle, SFTPServer, SFTPServerInterface
from paramiko.sftp import SFTP_OK


def main() -> None:
    host_key_path, authorized_keys, root, port = sys.argv[1:5]
    root = os.path.realpath(root)
    host_key = paramiko.Ed25519Key.from_private_key_file(host_key_path)
    allowed = set()
    with open(authorized_keys, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                allowed.add(parts[1])

    def real(path: bytes) -> str:
        # Paths arrive as text (paramiko decodes them); keep them under ROOT.
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        return os.path.join(root, *parts)

    def errno_of(e: OSError):
        return SFTPServer.convert_errno(e.errno)

    class Handle(SFTPHandle):
        def stat(self):
            try:
                return SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
            except OSError as e:
                return errno_of(e)

        def chattr(self, attr):
            return SFTP_OK

    class Fs(SFTPServerInterface):
        def list_folder(self, path):
            try:
                d = real(path)
                out = []
                for name in os.listdir(d):
                    a = SFTPAttributes.from_stat(os.lstat(os.path.join(d, name)))
                    a.filename = name
                    out.append(a)
                return out
            except OSError as e:
                return errno_of(e)

        def stat(self, path):
            try:
                return SFTPAttributes.from_stat(os.stat(real(path)))
            except OSError as e:
                return errno_of(e)

        def lstat(self, path):
            try:
                return SFTPAttributes.from_stat(os.lstat(real(path)))
            except OSError as e:
                return errno_of(e)

        def open(self, path, flags, attr):
            try:
                mode = getattr(attr, "st_mode", None) or 0o644
                fd = os.open(real(path), flags, mode & 0o7777)
            except OSError as e:
                return errno_of(e)
            if flags & os.O_WRONLY:
                fmode = "ab" if flags & os.O_APPEND else "wb"
            elif flags & os.O_RDWR:
                fmode = "a+b" if flags & os.O_APPEND else "r+b"
            else:
                fmode = "rb"
            f = os.fdopen(fd, fmode)
            h = Handle(flags)
            h.filename = real(path)
            h.readfile = f
            h.writefile = f
            return h

        def remove(self, path):
            try:
                os.remove(real(path))
            except OSError as e:
                return errno_of(e)
            return SFTP_OK

        def rename(self, oldpath, newpath):
            # The point of this server: rename(2) replaces an existing target.
            try:
                os.rename(real(oldpath), real(newpath))
            except OSError as e:
                return errno_of(e)
            return SFTP_OK

        def posix_rename(self, oldpath, newpath):
            return self.rename(oldpath, newpath)

        def mkdir(self, path, attr):
            try:
                os.mkdir(real(path), 0o755)
            except OSError as e:
                return errno_of(e)
            return SFTP_OK

        def rmdir(self, path):
            try:
                os.rmdir(real(path))
            except OSError as e:
                return errno_of(e)
            return SFTP_OK

        def chattr(self, path, attr):
            return SFTP_OK

    class Auth(paramiko.ServerInterface):
        def get_allowed_auths(self, username):
            return "publickey"

        def check_auth_publickey(self, username, key):
            if key.get_base64() in allowed:
                return paramiko.AUTH_SUCCESSFUL
            return paramiko.AUTH_FAILED

        def check_channel_request(self, kind, chanid):
            if kind == "session":
                return paramiko.OPEN_SUCCEEDED
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

        def check_channel_subsystem_request(self, channel, name):
            return super().check_channel_subsystem_request(channel, name)

    def serve(conn: socket.socket) -> None:
        t = paramiko.Transport(conn)
        t.add_server_key(host_key)
        t.set_subsystem_handler("sftp", SFTPServer, Fs)
        try:
            t.start_server(server=Auth())
        except Exception:
            t.close()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(64)
    print("listening", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
