"""Formal proofs of olmac's hardware blocks with SymbiYosys (``yowasp-sby``, ``smtbmc z3``)."""
