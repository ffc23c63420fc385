"""kvsim harness shim: KVCM's TestBase names (init_default, cleanup, workdir) (our code)."""
import logging
import os
import shutil
import tempfile

from testlib.worker import Worker, WorkerEnv
from testlib.worker_manager import WorkerManager

ROOT = os.environ.get("KVSIM_HARNESS_TMP") or os.path.join(os.getcwd(), "run")


class TestBase:
    workdir = None
    worker_manager = None

    def get_workdir(self):
        if self.workdir is None:
            self._init_dirs()
        return self.workdir

    def _init_dirs(self, work_dir=None):
        if work_dir is not None:
            self.workdir = work_dir
        elif self.workdir is None:
            os.makedirs(ROOT, exist_ok=True)
            self.workdir = tempfile.mkdtemp(prefix=type(self).__name__ + "_", dir=ROOT)
        os.makedirs(self.workdir, exist_ok=True)

    def clean_workdir(self):
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
        self._init_dirs()

    def get_hash_range(self, path):
        return 0, 0

    def prepare_test_resource(self, worker_num=1, work_dir=None, worker_mode="normal"):
        self._init_dirs(work_dir)
        self.worker_manager = WorkerManager()
        for i in range(worker_num):
            env = WorkerEnv(workdir=os.path.join(self.workdir, "worker_" + str(i)),
                            path_root=self.workdir)
            env.set_mode(worker_mode)
            self.worker_manager.add_worker(Worker(i, env))

    def start_worker(self, **kwargs):
        assert self.worker_manager.start_all(**kwargs), "kvsim did not start"

    def stop_worker(self):
        self.worker_manager.stop_all()

    def init_default(self, worker_num=1, **kwargs):
        self._init_dirs()
        self.prepare_test_resource(worker_num)
        self.start_worker(**kwargs)

    def cleanup(self):
        if self.worker_manager is not None:
            self.worker_manager.stop_all()
        if self.workdir is not None and not os.environ.get("KVSIM_KEEP_WORKDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        logging.info("cleanup done")
