"""Where a run's events go, outside a notebook: the run folder (``events.jsonl``, ``postmortem.json``), the
console, the static HTML report and the text summary. A new sink (a webhook, a tracker) goes here; the notebook
dashboard is in ``ptt_nb.notebook``."""
