"""The middle of the data flow: one ``Monitor`` per run, with its metric history and algorithm profile.

Sources (``ptt_nb.sources``) feed it; it runs the rules (``ptt_nb.rules``) and fans typed events out to the
sinks (``ptt_nb.sinks``, ``ptt_nb.notebook``). Imports neither torch, transformers nor IPython.
"""
