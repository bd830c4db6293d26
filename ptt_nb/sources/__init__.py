"""Where a run's facts come from, each feeding the same ``Monitor``: the TRL callback (with its crash guard,
run facts and per-rank stats), and a recorded run folder read back or followed while another process writes it.
A new importer (another tool's logs) goes here."""
