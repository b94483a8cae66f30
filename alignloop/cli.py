"""The `alignloop` command: parses, then dispatches. No work happens here.

Every leaf command is a frozen dataclass (its options, parsed by tyro) and a function that
takes it. Both are named as "module:attribute" strings and imported only when that command
runs, so `alignloop serve` never imports torch and `--help` stays quick.

A user's mistake (`alignloop.errors.UserError`, raised where the mistake is found) is printed
as one line and the command exits with code 2; `--debug` before the command (or
`ALIGNLOOP_DEBUG=1`) lets its traceback through instead. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Union

from alignloop import __version__
from alignloop.config import parse
from alignloop.errors import EXIT_USER_ERROR, UserError

DEBUG_ENV = "ALIGNLOOP_DEBUG"
"""Set to 1 (or pass --debug before the command) to see the traceback behind a user error."""
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    config: str  # "module:DataclassName"
    run: str  # "module:function"; called with the parsed config, returns an exit code or None
    help: str


Tree = dict[str, Union[Command, "Group"]]


@dataclass(frozen=True)
class Group:
    help: str
    commands: Tree


COMMANDS: Tree = {
    "train": Group(
        "Train a language-model policy, reward model or cost model.",
        {
            "sft": Command("alignloop.lm.sft:SFTConfig", "alignloop.lm.sft:train", "Supervised fine-tuning."),
            "reward": Command(
                "alignloop.lm.reward:RewardConfig",
                "alignloop.lm.reward:train",
                "Reward model from preference pairs (Bradley-Terry).",
            ),
            "cost": Command(
                "alignloop.lm.cost:CostConfig",
                "alignloop.lm.cost:train",
                "Cost model from safety judgements (Safe RLHF).",
            ),
            "dpo": Command(
                "alignloop.lm.dpo:DPOConfig",
                "alignloop.lm.dpo:train",
                "DPO family: sigmoid, ipo, hinge, robust, simpo, orpo, kto.",
            ),
            "ppo": Command(
                "alignloop.lm.ppo:PPOConfig", "alignloop.lm.ppo:train", "PPO-RLHF with a reward model."
            ),
            "ppo-lag": Command(
                "alignloop.lm.ppo:PPOLagConfig",
                "alignloop.lm.ppo:train_lagrangian",
                "Safe RLHF: PPO-Lagrangian with reward and cost models.",
            ),
            "reward-shaping": Command(
                "alignloop.lm.ppo:ShapingConfig",
                "alignloop.lm.ppo:train_shaping",
                "PPO on reward - fixed lambda * cost (baseline).",
            ),
            "grpo": Command(
                "alignloop.lm.grpo:GRPOConfig",
                "alignloop.lm.grpo:train",
                "GRPO (Dr. GRPO, DAPO with --loss): group-relative advantages, no critic.",
            ),
            "grpo-lag": Command(
                "alignloop.lm.grpo:GRPOLagConfig",
                "alignloop.lm.grpo:train_lagrangian",
                "Safe GRPO: GRPO with a cost model and a Lagrange multiplier (arXiv 2602.05863).",
            ),
            "rloo": Command(
                "alignloop.lm.grpo:RLOOConfig",
                "alignloop.lm.grpo:train_rloo",
                "RLOO: leave-one-out baseline.",
            ),
            "reinforce-pp": Command(
                "alignloop.lm.grpo:ReinforcePPConfig",
                "alignloop.lm.grpo:train_reinforce_pp",
                "REINFORCE++: per-token KL rewards, global baseline.",
            ),
            "remax": Command(
                "alignloop.lm.grpo:ReMaxConfig",
                "alignloop.lm.grpo:train_remax",
                "ReMax: the greedy response's reward as the baseline.",
            ),
            "aligner": Command(
                "alignloop.lm.aligner:AlignerConfig",
                "alignloop.lm.aligner:train",
                "Aligner-style correction model: (prompt, answer) -> corrected answer.",
            ),
        },
    ),
    "data": Group(
        "Check and convert feedback data (PKU-SafeRLHF, HH-RLHF, prompt/chosen/rejected).",
        {
            "validate": Command(
                "alignloop.feedback.commands:ValidateConfig",
                "alignloop.feedback.commands:validate",
                "Check a feedback file; report each bad row by line and field.",
            ),
            "convert": Command(
                "alignloop.feedback.commands:ConvertConfig",
                "alignloop.feedback.commands:convert",
                "Convert a feedback file to another format.",
            ),
        },
    ),
    "demo": Command(
        "alignloop.lm.demo:DemoConfig",
        "alignloop.lm.demo:run",
        "The toy-world Safe RLHF demo: SFT, reward+cost models, PPO, PPO-Lagrangian, shaping, DPO.",
    ),
    "control": Group(
        "Control policies on Gymnasium/MuJoCo: safe RL (PPO-Lag, CPO, ..., SAC-Lag) and preference-based RL.",
        {
            "train": Command(
                "alignloop.control.train:TrainConfig",
                "alignloop.control.train:train",
                "PPO, PPO-Lagrangian, CPO, PCPO, FOCOPS, CUP, SAC, SAC-Lagrangian; --saute.",
            ),
            "pbrl": Command(
                "alignloop.control.pbrl:PbrlConfig",
                "alignloop.control.pbrl:train",
                "Safe preference-based RL: learned reward and cost from a teacher's judgements.",
            ),
            "eval": Command(
                "alignloop.control.evaluate:EvalConfig",
                "alignloop.control.evaluate:run",
                "Mean return and cost of a trained policy, and a rendered video.",
            ),
        },
    ),
    "serve": Command(
        "alignloop.platform.serve:ServeConfig",
        "alignloop.platform.serve:run",
        "Start the feedback web platform (SQLite by default, PostgreSQL with --db).",
    ),
    "loop": Command(
        "alignloop.loop.rounds:LoopConfig",
        "alignloop.loop.rounds:run",
        "Online rounds: collect judgements on the platform, learn, align, evaluate.",
    ),
    "annotate": Command(
        "alignloop.loop.annotate:AnnotateConfig",
        "alignloop.loop.annotate:run",
        "A scripted annotator: label a platform project over HTTP with a scripted teacher.",
    ),
    "eval": Command(
        "alignloop.eval.commands:EvalConfig",
        "alignloop.eval.commands:run",
        "Evaluate policies: reward, cost, unsafe rate, win rate, leaderboard, plots.",
    ),
}


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def available(command: Command) -> bool:
    """Whether the module behind a command is part of this installation."""
    module = command.config.partition(":")[0]
    return importlib.util.find_spec(module) is not None


def _usage(prog: str, help_text: str, tree: Tree) -> str:
    lines = [f"usage: {prog} {{{','.join(tree)}}} ...", "", help_text, ""]
    if prog == "alignloop":
        lines += [
            "options:",
            "  -h, --help  show this help and exit",
            "  --version   print the version and exit",
            f"  --debug     show the traceback behind an error message (or set {DEBUG_ENV}=1)",
            "",
        ]
    lines.append("commands:")
    width = max(len(name) for name in tree)
    for name, node in tree.items():
        text = node.help
        if isinstance(node, Command) and not available(node):
            text += " [not in this version]"
        lines.append(f"  {name.ljust(width)}  {text}")
    lines += ["", f"Run '{prog} COMMAND --help' for a command's options."]
    return "\n".join(lines)


QUIET_LIBRARIES = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
"""alignloop draws its own progress; the bars transformers, huggingface_hub and datasets draw for
every model loaded or saved ("Loading weights", "Writing model shards") would break into it.
Set either variable to 0 to see them."""


def quiet_libraries() -> None:
    """Turn the libraries' own progress bars off for this process and its children, before
    they are imported (or, where they already are, through their switches)."""
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "0" and "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] != "0" and "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def debugging() -> bool:
    """Whether tracebacks of user errors are wanted (`ALIGNLOOP_DEBUG` set to anything but 0)."""
    return os.environ.get(DEBUG_ENV, "0").strip().lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debugging()
    while args[:1] == ["--debug"]:
        debug = True
        args.pop(0)
    if args[:1] == ["--version"]:
        print(f"alignloop {__version__}")
        return 0
    prog = "alignloop"
    node: Command | Group = Group(
        "alignloop aligns policies with people, safely: feedback, reward and cost models, Safe RLHF.",
        COMMANDS,
    )
    while isinstance(node, Group):
        if not args or args[0] in ("-h", "--help"):
            print(_usage(prog, node.help, node.commands))
            return 0 if args else 2
        name = args.pop(0)
        if name not in node.commands:
            print(
                f"{prog}: unknown command {name!r}; choose from {', '.join(node.commands)}",
                file=sys.stderr,
            )
            return 2
        prog = f"{prog} {name}"
        node = node.commands[name]
    if not available(node):
        print(f"{prog}: this command is not part of this version of alignloop", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        config = parse(_load(node.config), args, prog=prog, description=node.help)
        result = _load(node.run)(config)
    except UserError as exc:
        if debug:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
