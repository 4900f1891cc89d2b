"""Command-line programs of tf_dynhp, installed as console scripts.

* ``tf-dynhp-train`` (`tf_dynhp.cli.train`, also ``python tools/train.py``): one run -> run folder.
* ``tf-dynhp-export`` (`tf_dynhp.cli.export`, also ``python tools/export.py``): LiteRT export and its table.
* ``tf-dynhp-reproduce`` (`tf_dynhp.cli.reproduce`, also ``python tools/reproduce.py``): the paper's sweep.

Each program defines its absl flags when its module is imported and starts through
its `run()`: import one program per process. This package imports none of them.
`train` and `export` import nothing of tf_dynhp (so nothing of TensorFlow) before
their flags are parsed. `paper` (the paper's numbers and settings) and
`run_folders` (run status, groups of seeds) are shared with ``tools/report.py``
and ``tools/summarize.py``.
"""
