"""Training in the simulator: sim-train."""

from __future__ import annotations

import click


@click.command("sim-train")
@click.option("--algo", type=click.Choice(["dreamer", "a2c"]), default="dreamer", show_default=True,
              help="DreamerV3 + RL², or stable-baselines3's A2C baseline with its defaults.")
@click.option("--preset", type=click.Choice(["smoke", "host", "park"]), default="host", show_default=True,
              help="smoke: <2 min check; host: the default policy (<=60 min); park: Park's benchmark.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the run (model, replay, env rows).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (checkpoint, metrics.jsonl, policy.safetensors). Default runs/ALGO-PRESET-sSEED.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt exactly where it stopped.")
@click.option("--env-steps", type=click.IntRange(1), default=None, help="Override the preset's env-step limit.")
@click.option("--match-run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A2C only: train for as many env steps as the dreamer run in this directory did.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Dreamer only: change one field of the preset's config (repeatable), e.g. --set bc_floor=0.3.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still go to metrics.jsonl).")
def sim_train(algo: str, preset: str, seed: int, out: str | None, resume: bool, env_steps: int | None,
              match_run: str | None, overrides: tuple[str, ...], no_progress: bool) -> None:
    """Train a policy in the simulator and write OUT/policy.safetensors.

    \b
    Example:
      lbagent sim-train --preset smoke --seed 0 --out runs/smoke
      lbagent sim-train --preset host --seed 1 --out runs/host        # the default policy, <= 60 min
      lbagent sim-train --algo a2c --preset host --match-run runs/host --out runs/host-a2c
    """
    from pathlib import Path

    from rich.console import Console

    run_dir = Path(out or f"runs/{algo}-{preset}-s{seed}")
    if algo == "dreamer":
        if match_run:
            raise click.UsageError("--match-run is for --algo a2c")
        from lbagent.agent.train import train_dreamer

        path, final = train_dreamer(preset, seed, run_dir, resume, progress=not no_progress, env_steps=env_steps,
                                    overrides=overrides)
    else:
        if overrides:
            raise click.UsageError("--set is for --algo dreamer (A2C keeps stable-baselines3's defaults)")
        from lbagent.agent.a2c import steps_of_run, train_a2c

        steps = env_steps or (steps_of_run(Path(match_run)) if match_run else None)
        path, final = train_a2c(preset, seed, run_dir, steps, progress=not no_progress)
    Console().print(f"policy: {path}\nheld-out mean JCT {final['mean_jct']:.2f} "
                    f"(random {final['random_mean_jct']:.2f}) on suite {final['suite']}")
