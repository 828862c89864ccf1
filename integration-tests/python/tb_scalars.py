"""Reads every scalar under a TensorBoard log directory with TensorBoard's own
reader, for the experiment-tracking tests (they check that rayforge's event
files read back as TensorBoard reads them). Runs in target/tracking-venv
(scripts/tracking-venv.sh), found through RAYFORGE_TRACKING_PYTHON.

    python tb_scalars.py LOGDIR

prints one JSON object: {"RUN": {"TAG": [[step, value, wall_time], ...]}},
RUN being each folder that holds event files, relative to LOGDIR ("." for
LOGDIR itself), in the order TensorBoard keeps them. Scalars come both from
Summary.Value.simple_value and from scalar tensors of the "scalars" plugin.
"__errors__" lists [file, message] for each record the reader stopped at
(bad CRC, truncated record: TensorBoard stops reading that file there and
only logs it) and [run, message] for a run that failed to load.
"""

import json
import logging
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import event_multiplexer
from tensorboard.util import tensor_util


class _Errors(logging.Handler):
    """TensorBoard's file loader swallows a bad record, logging
    'Truncated record in FILE (ERROR)' at DEBUG level: keep those."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.found = []

    def emit(self, record):
        if record.msg.startswith("Truncated record in"):
            self.found.append([str(a) for a in record.args])


def main(logdir):
    errors = _Errors()
    log = logging.getLogger("tensorboard")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(errors)

    # 0 keeps every event; purge_orphaned_data=False keeps steps that a
    # restarted writer wrote again, so that the tests see all that is there.
    keep_all = {ea.SCALARS: 0, ea.TENSORS: 0}
    mux = event_multiplexer.EventMultiplexer(
        size_guidance=keep_all, purge_orphaned_data=False
    )
    mux.AddRunsFromDirectory(logdir)
    out = {}
    for run in sorted(mux.Runs()):
        try:
            mux.GetAccumulator(run).Reload()
        except Exception as e:  # e.g. an Event proto that does not parse
            errors.found.append([run, f"{type(e).__name__}: {e}"])
        tags = mux.Runs()[run]
        series = {}
        for tag in tags.get(ea.SCALARS, []):
            series[tag] = [[e.step, e.value, e.wall_time] for e in mux.Scalars(run, tag)]
        for tag in tags.get(ea.TENSORS, []):
            if mux.SummaryMetadata(run, tag).plugin_data.plugin_name != "scalars":
                continue
            series.setdefault(tag, []).extend(
                [e.step, tensor_util.make_ndarray(e.tensor_proto).item(), e.wall_time]
                for e in mux.Tensors(run, tag)
            )
        out[run] = series
    if errors.found:
        out["__errors__"] = errors.found
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tb_scalars.py LOGDIR")
    main(sys.argv[1])
