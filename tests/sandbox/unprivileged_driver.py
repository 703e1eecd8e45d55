"""Runs hostile cases in a LocalSandbox as whatever uid executes it; prints JSON results.

Used by test_local_unprivileged.py through ``setpriv --reuid=65534 ... /usr/bin/python3``;
standard library only, so any system Python can run it. Usage:
``python3 unprivileged_driver.py REPO_ROOT MARKER WARM_WORKERS PRIVATE_FILE`` (a 0600 file
of the driver's uid in a home directory, which the sandbox must hide). The cases run one after
the other, so with warm workers they all run on the same worker ("plant" leaves a file,
environment variables and an escaped process behind, "look" reports what it can see).
"""

import json
import os
import sys

_KEYCTL = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "libc.syscall.restype = ctypes.c_long\n")
"""Prefix of the cases that use the x86_64 key syscalls (add_key 248, keyctl 250)."""

CASES = {
    "identity": ("import os\nprint(os.getuid(), os.getpid(), "
                 "len([p for p in os.listdir('/proc') if p.isdigit()]))", 5.0),
    "signal_server": ("import os, signal\nfor sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,"
                      " signal.SIGUSR1, signal.SIGSTOP, signal.SIGKILL):\n    os.kill(1, sig)\n"
                      "print(hash('reopold-seed'))", 5.0),
    "after_signals": ("print(hash('reopold-seed'))", 5.0),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", 5.0),
    "memory": ("x = bytearray(10 * 1024**3)", 5.0),
    "sleep": ("import time\ntime.sleep(60)", 1.0),
    "network": ("import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), 3)\n"
                "except OSError as e:\n    print('blocked', e.errno)", 5.0),
    "shadow": ("open('/etc/shadow').read()", 5.0),
    "private": ("import sys\ntry:\n    print(open(sys.stdin.read()).read())\n"
                "except OSError as e:\n    print('hidden', e.errno)", 5.0),
    "writes": ("import sys\nfor p in sys.stdin.read().split():\n    try:\n"
               "        open(p, 'w').write('x'); print('wrote', p)\n"
               "    except OSError as e:\n        print('denied', e.errno)", 5.0),
    "escape": ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n"
               "    if os.fork() == 0:\n        os.execv(sys.executable, [sys.executable, '-c', "
               "'import time; time.sleep(60)', sys.stdin.read()])\n    os._exit(0)\n"
               "os.wait()\ntime.sleep(0.5)\nprint('parent done')", 5.0),
    "plant": (_KEYCTL + "import os, sys\nopen('planted', 'w').write('x')\n"
              "os.environ['PLANTED'] = '1'\n"
              "print(libc.syscall(248, b'user', b'planted', b'x', 1, ctypes.c_long(-4)),"
              " ctypes.get_errno())\n"
              "if os.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, [sys.executable,"
              " '-c', 'import time; time.sleep(60)', sys.stdin.read()])\n", 5.0),
    "look": (_KEYCTL + "import os\nprocs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
             "key = libc.syscall(250, 10, ctypes.c_long(-4), b'user', b'planted', 0)\n"
             "print(sorted(os.listdir('.')), os.environ.get('PLANTED'), len(procs), key > 0)",
             5.0),
}


def import_sandbox(repo: str):
    """``reopold_agent.sandbox`` from the source tree at ``repo``, without running the
    package's ``__init__`` (which registers the environments and so needs gymnasium, which a
    system Python lacks); the sandbox itself needs only the standard library."""
    import types

    package = types.ModuleType("reopold_agent")
    package.__path__ = [os.path.join(repo, "reopold_agent")]
    sys.modules["reopold_agent"] = package
    import reopold_agent.sandbox

    return reopold_agent.sandbox


def main() -> None:
    repo, marker, warm_workers, private = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sandbox_module = import_sandbox(repo)
    LocalSandbox, SandboxConfig = sandbox_module.LocalSandbox, sandbox_module.SandboxConfig

    sandbox = LocalSandbox(SandboxConfig(timeout_s=5, max_processes=16,
                                         warm_workers=warm_workers))
    stdin = {"writes": f"/var/tmp/{marker} /dev/shm/{marker} {repo}/{marker}",
             "escape": marker, "plant": marker, "private": private}
    report = {"euid": os.geteuid(), "user_namespace": sandbox.user_namespace,
              "isolated": sandbox.isolated, "warm": sandbox.warm, "cases": {}}
    for name, (code, timeout_s) in CASES.items():
        result = sandbox.run(code, stdin=stdin.get(name, ""), timeout_s=timeout_s)
        report["cases"][name] = {"exit_code": result.exit_code, "limit": result.limit.value,
                                 "stdout": result.stdout, "stderr": result.stderr[-500:],
                                 "duration_s": result.duration_s}
    sandbox.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
