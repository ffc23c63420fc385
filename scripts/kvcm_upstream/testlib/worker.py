"""kvsim harness shim for KVCM's integration tests: a Worker is one `kvsim serve`.

Our own code (not upstream's): offers the names KVCM's tests use (WorkerEnv with
rpc_port / http_port / admin_rpc_port / admin_http_port, Worker, start/stop) and starts
``python -m kvsim serve --admin-auth none`` on fresh loopback ports instead of KVCM's
binary. Meta and admin gRPC share one port (KVCM's default); the debug service listens
on the meta HTTP port + 3000. Workers given ``kvcm.distributed_lock.uri=file://DIR``
share DIR as their data dir (state DB and leader lease). Environment: KVSIM_ROOT (the
checkout to serve), KVSIM_PYTHON (the Python that runs kvsim), KVSIM_CACHE_DIR (kernel
cache), KVSIM_START_TIMEOUT (s), KVSIM_EXTRA_ARGS (more `kvsim serve` options).
"""
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.parse

# the kvsim checkout to serve (default: the one holding this file) and the Python that
# runs it (not the harness's venv: that one has the old protobuf KVCM's tests need)
KVSIM_ROOT = os.environ.get("KVSIM_ROOT") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))
KVSIM_PYTHON = os.environ.get("KVSIM_PYTHON", "python3")
START_TIMEOUT_S = float(os.environ.get("KVSIM_START_TIMEOUT", "600"))


def _free_ports(n):
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        # the debug listener takes http_port + 3000: keep it below 65536 and free
        socks.append(s)
        if p + 3000 > 65535 or p in ports:
            continue
        ports.append(p)
    for s in socks:
        s.close()
    return ports


class WorkerEnv:
    def __init__(self, workdir, path_root=None, binary_name="kvsim"):
        self.workdir = workdir
        self.path_root = path_root
        self.binary_name = binary_name
        self.parameters = {}
        self.mode = "normal"
        self.port_range_from = self.port_range_to = None
        self.rpc_port = self.http_port = self.admin_rpc_port = self.admin_http_port = None
        self.ip = "127.0.0.1"

    def set_port_range(self, a, b):
        self.port_range_from, self.port_range_to = a, b

    def set_mode(self, mode):
        self.mode = mode

    def update_parameters(self, **kwargs):
        self.parameters.update(kwargs)

    def update_ports(self):
        while True:
            rpc, http, admin_http = _free_ports(3)
            # KVCM's harness serves meta and admin gRPC on one port (its default)
            self.rpc_port, self.http_port = rpc, http
            self.admin_rpc_port, self.admin_http_port = rpc, admin_http
            self.debug_http_port = http + 3000
            if self.debug_http_port in (rpc, admin_http):
                continue
            try:
                s = socket.socket()
                s.bind(("127.0.0.1", self.debug_http_port))
                s.close()
                return
            except OSError:
                continue


class Worker:
    def __init__(self, worker_id, worker_env):
        self.worker_id = worker_id
        self.env = worker_env
        self.worker_name = "kvsim_" + str(worker_id)
        self.proc = None

    def _data_dir(self):
        uri = self.env.parameters.get("kvcm.distributed_lock.uri")
        if uri:  # workers sharing a lock share the data dir (state DB + leader.lock)
            return urllib.parse.urlparse(uri).path
        return os.path.join(self.env.workdir, "data")

    def start_worker(self, **kwargs):
        self.env.update_parameters(**kwargs)
        os.makedirs(self.env.workdir, exist_ok=True)
        self.env.update_ports()
        e = self.env
        cmd = [KVSIM_PYTHON, "-m", "kvsim", "serve", "--admin-auth", "none",
               "--host", "127.0.0.1", "--http-port", str(e.http_port),
               "--admin-http-port", str(e.admin_http_port), "--grpc-port", str(e.rpc_port),
               "--admin-grpc-port", str(e.admin_rpc_port),
               "--debug-http-port", str(e.debug_http_port),
               "--data-dir", self._data_dir()]
        cmd += os.environ.get("KVSIM_EXTRA_ARGS", "").split()
        env = dict(os.environ)
        env["PYTHONPATH"] = KVSIM_ROOT
        logging.info("start %s: %s", self.worker_name, " ".join(cmd))
        self._out = open(os.path.join(e.workdir, "stdout"), "ab")  # noqa: SIM115
        self._err = open(os.path.join(e.workdir, "stderr"), "ab")  # noqa: SIM115
        said_from = self._err.tell()  # a restart appends: read only this run's lines
        self.proc = subprocess.Popen(cmd, cwd=e.workdir, stdout=self._out, stderr=self._err,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        ports = [e.http_port, e.admin_http_port, e.rpc_port]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(os.path.join(e.workdir, "stderr")) as f:
                    logging.error("kvsim exited %s: %s", self.proc.returncode,
                                  f.read()[-3000:])
                return False
            # ready once kvsim says so (every listener bound: a port answering might be
            # another process's that took it after we probed it, on a shared machine)
            with open(os.path.join(e.workdir, "stderr"), "rb") as f:
                f.seek(said_from)
                said = b"kvsim serving on" in f.read()
            if said and all(_accepts(p) for p in ports):
                return True
            time.sleep(0.1)
        self.stop_worker()
        return False

    def start_worker_get_pid(self, **kwargs):
        return self.proc.pid if self.start_worker(**kwargs) else None

    def get_pid(self):
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid

    def get_work_id(self):
        return self.worker_id

    def get_work_dir(self):
        return self.env.workdir

    def stop_worker(self, pid=None, force=False):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if force else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        for f in (self._out, self._err):
            f.close()


def _accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
