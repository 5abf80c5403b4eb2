"""The pod on this host: CRI-O's lifecycle (``crio``), the crictl client
(``crictl``), pod templates and diagnostics (``podfiles``), and which parts
a pod needs and what CRI-O's answers mean (``podhints``, which the check
step reads too)."""
