"""Run under mpiexec: ``bcast_object(idle=True)`` lets the root work while the others sleep.

Rank 0 computes for about WORK_S seconds, then broadcasts; every other rank waits for it in
``bcast_object`` and records the CPU time it used while waiting. argv: OUT.json [spin] ("spin":
a plain bcast_object, to show the check can fail: MPI's wait polls a core busily)."""

import json
import sys
import time

from desmpi.comm import Comm, run_or_abort

WORK_S = 0.6
comm = Comm.world()


def main() -> None:
    idle = "spin" not in sys.argv[2:]
    comm.barrier()
    w0, c0 = time.perf_counter(), time.process_time()
    if comm.rank == 0:
        x = 0
        while time.perf_counter() - w0 < WORK_S:  # the root's work (busy, like a calibration)
            x += 1
        got = comm.bcast_object({"from": 0, "n": x}, idle=idle)
    else:
        got = comm.bcast_object(None, idle=idle)
    res = {"rank": comm.rank, "wall_s": time.perf_counter() - w0,
           "cpu_s": time.process_time() - c0, "got_from": got["from"], "n": got["n"]}
    allres = comm.allgather_object(res)
    if comm.rank == 0:
        json.dump(allres, open(sys.argv[1], "w"))


if __name__ == "__main__":
    sys.exit(run_or_abort(main, comm))
