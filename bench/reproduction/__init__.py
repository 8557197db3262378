"""The miniature reproduction of the paper's Tables 3-5 and the SARA study, behind ``bench/reproduce.py``:
``runs`` (what trains and evaluates), ``sara`` (ground-truth masks, their degradation, mask quality),
``diagnose`` (why AP moves), ``load`` / ``stats`` / ``plots`` / ``markdown`` (the report)."""
