"""The simulator: park and host dynamics behind the contract.

Every contract-speaking vector env (see :mod:`lbagent.sim.base`) behaves the same way, so training,
``lbagent eval`` and ``lbagent replay`` can drive either dynamics.
"""
