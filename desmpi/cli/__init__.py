"""The ``desmpi`` command: data, train, eval, demo, bench.

Every command runs under :func:`desmpi.comm.run_or_abort`, so an error on any rank ends the
whole job with a message naming the rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from desmpi import __version__
from desmpi.comm import Comm, run_or_abort
from desmpi.logs import setup

log = logging.getLogger("desmpi")


def _data_synth(a, comm: Comm) -> int:
    from desmpi.data.synth import SynthSpec, generate, parse_multi_hot

    spec = SynthSpec(rows=a.rows, seed=a.seed, model_seed=a.model_seed, cap=a.cap, zipf=a.zipf,
                     multi_hot=parse_multi_hot(a.multi_hot), weighted=a.weighted)
    if comm.rank == 0:
        rep = generate(spec, a.out)
        log.info("wrote %s: %d rows, positive rate %.4f, oracle AUC %.4f (%.1f s)", a.out,
                 rep["rows"], rep["positive_rate"], rep["oracle_auc"], rep["seconds"])
        if a.json:
            print(json.dumps(rep))
    comm.barrier()
    return 0


def _data_convert(a, comm: Comm) -> int:
    from desmpi.data.convert import convert
    from desmpi.data.schema import load_schema

    rep = convert(a.inputs, a.out, load_schema(a.format), comm,
                  max_bad_fraction=a.max_bad_fraction)
    if comm.rank == 0:
        log.info("wrote %s: %d rows from %d lines (%d malformed, skipped) in %.2f s on %d "
                 "rank(s): %.0f rows/s", a.out, rep["rows"], rep["lines"], rep["bad_lines"],
                 rep["seconds"], rep["ranks"], rep["rows_per_s"])
        for ex in rep["examples"][:10]:
            log.warning("malformed: %s", ex)
        if a.json:
            print(json.dumps(rep))
    return 0


def _data_info(a, comm: Comm) -> int:
    from desmpi.data.info import info

    rep = info(a.file)
    if comm.rank == 0:
        if a.json:
            print(json.dumps(rep))
        else:
            for k, v in rep.items():
                print(f"{k:>16}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="desmpi", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"desmpi {__version__}")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of user errors too (or DESMPI_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="make, convert and inspect data sets").add_subparsers(
        dest="data_cmd", required=True)
    s = d.add_parser("synth", help="generate Criteo-schema data with a hidden model")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model-seed", type=int, default=1234,
                   help="seed of the hidden model (same for train and eval sets)")
    s.add_argument("--cap", type=int, default=None, help="cap on per-field cardinality")
    s.add_argument("--zipf", type=float, default=1.1, help="power-law exponent of key ids")
    s.add_argument("--multi-hot", default=None, help="FIELD:MAXLEN,... e.g. 3:5,10:2")
    s.add_argument("--weighted", action="store_true", help="non-unit values in multi-hot fields")
    s.add_argument("--out", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_data_synth)
    c = d.add_parser("convert", help="text (Criteo TSV/CSV or a schema) -> HDF5")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--format", default="criteo-tsv",
                   help="criteo-tsv | criteo-csv | SCHEMA.toml")
    c.add_argument("--max-bad-fraction", type=float, default=0.001)
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=_data_convert)
    i = d.add_parser("info", help="rows, positives, per-field distinct keys")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=_data_info)

    from desmpi.cli.model import add_commands as add_model
    from desmpi.cli.sim import add_commands as add_sim
    from desmpi.cli.train import add_commands

    add_commands(sub)
    add_sim(sub)
    add_model(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["simulate"] and raw[1:2] in (["cluster"], ["collective"]):
        from desmpi.cli import simtools

        setup(0, "-v" in raw)
        return simtools.main(raw[1:])  # single-process tools: no MPI
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ["DESMPI_DEBUG"] = "1"
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that relaunch
    comm = Comm.world()
    setup(comm.rank, args.verbose)
    return run_or_abort(lambda: args.fn(args, comm), comm)


if __name__ == "__main__":
    sys.exit(main())
