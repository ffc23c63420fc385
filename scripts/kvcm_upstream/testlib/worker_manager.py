"""kvsim harness shim: KVCM's WorkerManager names over kvsim workers (our own code)."""
import logging


class WorkerManager:
    def __init__(self):
        self.workers = {}

    def add_worker(self, worker):
        self.workers[worker.worker_id] = worker

    def get_worker(self, worker_id):
        return self.workers[worker_id]

    def start_all(self, **kwargs):
        for w in self.workers.values():
            if not w.start_worker(**kwargs):
                logging.error("worker %s did not start", w.worker_id)
                return False
        return True

    def start_worker(self, worker_id, **kwargs):
        return self.workers[worker_id].start_worker(**kwargs)

    def stop_worker(self, worker_id, force=False):
        self.workers[worker_id].stop_worker(force=force)

    def stop_all(self):
        for w in self.workers.values():
            w.stop_worker()
