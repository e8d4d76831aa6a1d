"""Offline evaluation: the protocol, experiments, the headroom study, host traces and their replay."""
