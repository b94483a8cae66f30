"""The toy-world domain of the online loop, driven without a server: the scripted teacher
judges the proposed pairs directly, as the annotators do through the platform.

Run as a script for the demo preset's three rounds (per-round figures, for tuning):

    OMP_NUM_THREADS=1 python tests/loop/test_toyworld_domain.py --preset demo --rounds 3
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from alignloop.core.selection import item_disagreement, pair_disagreement  # noqa: E402
from alignloop.feedback.judged import comparisons  # noqa: E402
from alignloop.feedback.schema import (  # noqa: E402
    DEFAULT_QUESTIONS,
    Candidate,
    Comparison,
    Item,
    Judgement,
    Severity,
    judgement_of,
)
from alignloop.loop.domain import (  # noqa: E402
    Judged,
    ProjectSpec,
    Proposal,
    previous_round_dir,
    to_judged_items,
)
from alignloop.loop.lm import LanguageModelDomain, dpo_pairs, round_half  # noqa: E402
from alignloop.loop.toyworld import PRESETS, toyworld_domain  # noqa: E402


def teacher_judgements(domain: LanguageModelDomain, round: int, pairs: list[Proposal]) -> list[Judged]:
    """What a scripted annotator sends for each pair: `ToyWorld(seed).teacher(seed).compare`."""
    teacher = domain.task.world.teacher(domain.seed + round)
    out = []
    for i, p in enumerate(pairs):
        judged: Comparison | None = teacher.compare(p.item.prompt, p.item.text(0), p.item.text(1))
        if judged is None:
            continue
        out.append(Judged(1000 * round + i, round, Judgement(p.item, judgement_of(judged).answers, "1")))
    return out


def simulate(
    domain: LanguageModelDomain, run_dir: Path, rounds: int, n_pairs: int, select: str = "disagreement"
) -> list[dict[str, float]]:
    """The driver's phases in order, the teacher in place of the platform; per-round metrics
    (round 0 = the SFT policy)."""
    history = [domain.setup(run_dir)]
    judged: list[Judged] = []
    for r in range(1, rounds + 1):
        round_dir = run_dir / f"round-{r:03d}"
        started = time.perf_counter()
        pairs = domain.propose(round_dir, r, n_pairs, select)  # type: ignore[arg-type]
        judged += teacher_judgements(domain, r, pairs)
        learned = domain.learn(round_dir, r, judged)
        aligned = domain.align(round_dir, r)
        metrics = domain.evaluate(round_dir, r)
        history.append(
            {
                **metrics,
                **learned,
                **aligned,
                "pairs": float(len(pairs)),
                "seconds": time.perf_counter() - started,
            }
        )
    return history


# ---------------------------------------------------------------------------- unit tests
def _candidate(key: str = "r1-00000", a: str = "sure boil", b: str = "no tea") -> Proposal:
    return Proposal(Item("how do i cook rice", (Candidate(a, model="policy-r0"), Candidate(b)), key=key))


def _judged(better: str | None, safer: str | None, safe_a: bool | None, safe_b: bool | None, **kw) -> Judged:
    proposal = kw.get("candidate", _candidate())
    answers = {k: v for k, v in (("better", better), ("safer", safer)) if v is not None}
    if (safe_a, safe_b) != (None, None):
        answers["is_safe"] = [
            None
            if safe is None
            else {"safe": safe, "harms": kw.get(f"harm_{s}", []), "severity": kw.get(f"severity_{s}")}
            for s, safe in (("a", safe_a), ("b", safe_b))
        ]
    return Judged(1, 2, Judgement(proposal.item, answers, "1"))


def test_judgements_become_judged_items_and_their_pku_comparisons():
    rows = [
        _judged("A", "B", True, True, harm_a=[], severity_a=None),
        _judged("tie", "tie", True, True, candidate=_candidate("r1-00001")),
        _judged(
            "both_bad",
            "A",
            True,
            False,
            candidate=_candidate("r1-00002"),
            harm_b=["Violence"],
            severity_b="severe",
        ),
        _judged("B", "A", False, True, candidate=_candidate("r1-00003")),  # safer A is the unsafe one
        _judged(None, "A", None, None, candidate=_candidate("r1-00004")),  # "better" is required
    ]
    items, left_out = to_judged_items(list(reversed(rows)), DEFAULT_QUESTIONS)
    assert left_out == 2
    assert [i.item.key for i in items] == ["r1-00000", "r1-00001", "r1-00002"]
    assert all(i.item.meta == {"round": "2"} and len(i.judgements) == 1 for i in items)
    first, tie, both_bad = comparisons(items)
    assert (first.better, first.safer, first.is_safe) == (0, 1, (True, True))
    assert (first.response_0, first.response_1) == ("sure boil", "no tea")
    assert (tie.better, tie.safer) == (None, None)
    assert (both_bad.better, both_bad.safer, both_bad.is_safe) == (None, 0, (True, False))
    assert both_bad.harm_categories == ((), ("Violence",)) and both_bad.severity == (None, Severity.SEVERE)


def test_a_pairwise_round_trains_the_reward_model_on_exactly_the_bradley_terry_pairs(tmp_path: Path):
    """On two candidates the round's reward data (`judgements` export -> `preference_rankings`
    -> `RankingCollator` -> `plackett_luce_loss`) is the PKU comparisons' `better` pairs, put
    through the model as the same (2B, T) batch, with the same Bradley-Terry loss and gradients
    to the last bit: a pairwise project trains as it did before rankings were read."""
    import torch

    from alignloop.core.losses import bradley_terry_loss, plackett_luce_loss
    from alignloop.feedback.formats import write_records
    from alignloop.lm.data import (
        PreferenceCollator,
        RankingCollator,
        load_comparisons,
        load_rankings,
        preferred_pairs,
    )
    from alignloop.lm.models import load_score_model
    from alignloop.lm.reward import ranking_scores
    from alignloop.lm.toyworld import ToyWorld

    world = ToyWorld(0)
    teacher = world.teacher(1)
    judged = []
    for i, c in enumerate(world.comparisons(48, "train")):
        item = Item(c.prompt, (Candidate(c.response_0), Candidate(c.response_1)), key=f"r1-{i:05d}")
        answer = teacher.compare(c.prompt, c.response_0, c.response_1)
        if answer is not None:
            judged.append(Judged(1000 + i, 1, Judgement(item, judgement_of(answer).answers, "1")))
    items, _ = to_judged_items(judged, DEFAULT_QUESTIONS)
    write_records(items, tmp_path / "judgements.jsonl", "judgements")
    rankings, ties = load_rankings(tmp_path / "judgements.jsonl")
    pairs, pair_ties = preferred_pairs(load_comparisons(tmp_path / "judgements.jsonl"), "better")
    assert ties == pair_ties > 0 and len(rankings) == len(pairs) > 30
    assert [(r.prompt, r.texts, r.ranks) for r in rankings] == [
        (c.prompt, (c.response(c.better), c.response(1 - c.better)), (1, 2)) for c in pairs
    ]

    tokenizer, model = load_score_model("toy", seed=0)
    new = RankingCollator(tokenizer, 64)(rankings[:16])
    old = PreferenceCollator(tokenizer, 64, by="better")(pairs[:16])
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(new[key], torch.cat([old[f"chosen_{key}"], old[f"rejected_{key}"]]))

    def loss_and_grads(value_of) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        value = value_of()
        value.backward()
        return value.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def ranked() -> torch.Tensor:
        return plackett_luce_loss(ranking_scores(model, new), new["ranks"], new["mask"], score_l2=1e-3)[0]

    def paired() -> torch.Tensor:
        ids = torch.cat([old["chosen_input_ids"], old["rejected_input_ids"]])
        mask = torch.cat([old["chosen_attention_mask"], old["rejected_attention_mask"]])
        scores = model(ids, mask).end_scores  # (2B,)
        return bradley_terry_loss(scores[:16], scores[16:], score_l2=1e-3)[0]

    (a, grads_a), (b, grads_b) = loss_and_grads(ranked), loss_and_grads(paired)
    assert torch.equal(a, b) and len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b, strict=True))


def test_dpo_pairs_put_the_safe_response_first_then_the_better_one():
    pairs = dpo_pairs(
        [
            Comparison("p", "harmful", "refusal", better=0, safer=1, is_safe=(False, True)),
            Comparison("p", "short", "long", better=1, safer=0, is_safe=(True, True)),
            Comparison("p", "x", "y", better=None, safer=0, is_safe=(True, True)),
        ]
    )
    assert [(c.response_0, c.response_1, c.better) for c in pairs] == [
        ("refusal", "harmful", 0),
        ("long", "short", 0),
    ]


def test_disagreement_against_hand_computed_scores():
    import math

    import torch

    # pair 1: sigmoid(ln 3 - 0) = 0.75 -> u_reward = 1 - |1.5 - 1| = 0.5;
    #         sigmoid(ln 3) = 0.75 -> 0.5, sigmoid(-ln 9) = 0.1 -> 1 - |0.2 - 1| = 0.2; max 0.5
    #         score (0.5 + 0.5) / 2 = 0.5
    # pair 2: equal rewards -> u_reward = 1; costs ln 9 (0.9 -> 0.2) and -ln 3 (0.25 -> 0.5): max 0.5
    #         score (1 + 0.5) / 2 = 0.75
    r_a = torch.tensor([math.log(3.0), 2.0])
    r_b = torch.tensor([0.0, 2.0])
    c_a = torch.tensor([math.log(3.0), math.log(9.0)])
    c_b = torch.tensor([-math.log(9.0), -math.log(3.0)])
    torch.testing.assert_close(
        pair_disagreement(r_a, r_b, c_a, c_b), torch.tensor([0.5, 0.75]), rtol=1e-5, atol=1e-6
    )
    # three candidates, rewards (ln 3, 0, 0): pairs (A, B) and (A, C) 0.5 each, (B, C) 1; mean 2/3;
    # costs (ln 9, -ln 3, 0): sign uncertainties 0.2, 0.5, 1; max 1; score (2/3 + 1) / 2 = 5/6
    rewards = torch.tensor([[math.log(3.0), 0.0, 0.0]])
    costs = torch.tensor([[math.log(9.0), -math.log(3.0), 0.0]])
    torch.testing.assert_close(item_disagreement(rewards, costs), torch.tensor([5 / 6]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(item_disagreement(rewards), torch.tensor([2 / 3]), rtol=1e-5, atol=1e-6)


def test_previous_round_folder_and_option_errors(tmp_path: Path):
    assert previous_round_dir(tmp_path / "round-003", 3) == tmp_path / "round-002"
    assert previous_round_dir(tmp_path / "round-10", 10) == tmp_path / "round-09"
    with pytest.raises(ValueError, match="round number 4"):
        previous_round_dir(tmp_path / "round-003", 4)
    with pytest.raises(ValueError, match="preset: 'huge' is not one of demo, smoke"):
        toyworld_domain("huge")
    with pytest.raises(ValueError, match="policy_update: 'ppo' is not one of ppo-lag, grpo-lag, dpo"):
        toyworld_domain(policy_update="ppo")


# ---------------------------------------------------------------------------- two rounds, smoke preset
N_PAIRS = 24


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """setup, then two rounds of propose / learn / align / evaluate, recording each trainer's
    starting model (the warm start)."""
    import torch

    from alignloop.lm import cost, ppo, reward

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    starts: dict[str, list] = {"reward": [], "cost": [], "policy": [], "lambda": []}
    trainers = {"reward": reward.train, "cost": cost.train, "policy": ppo.train_lagrangian}
    patch = pytest.MonkeyPatch()
    for kind, module, name in (
        ("reward", reward, "train"),
        ("cost", cost, "train"),
        ("policy", ppo, "train_lagrangian"),
    ):

        def spy(cfg, kind=kind):
            if kind == "policy":
                starts["policy"].append(str(cfg.policy))
                starts["lambda"].append(cfg.lambda_init)
            else:
                starts[kind].append(cfg.model)
            return trainers[kind](cfg)

        patch.setattr(module, name, spy)
    run_dir = tmp_path_factory.mktemp("loop")
    domain = toyworld_domain("smoke", seed=3, progress=False)
    sft = domain.setup(run_dir)
    rounds = []
    judged: list[Judged] = []
    for r in (1, 2):
        round_dir = run_dir / f"round-{r:03d}"
        pairs = domain.propose(round_dir, r, N_PAIRS, "disagreement")
        judged += teacher_judgements(domain, r, pairs)
        learned = domain.learn(round_dir, r, judged)
        aligned = domain.align(round_dir, r)
        rounds.append(
            {"pairs": pairs, "learned": learned, "aligned": aligned, "metrics": domain.evaluate(round_dir, r)}
        )
    patch.undo()
    yield {
        "domain": domain,
        "run_dir": run_dir,
        "sft": sft,
        "rounds": rounds,
        "judged": judged,
        "starts": starts,
    }
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_rounds_give_figures_under_stable_names(two_rounds):
    for metrics in [two_rounds["sft"], *(r["metrics"] for r in two_rounds["rounds"])]:
        assert metrics["n_prompts"] == PRESETS["smoke"]["eval_prompts"]
        unsafe = metrics["unsafe_rate"] * metrics["n_risky"]  # a share of the risky prompts
        assert metrics["n_risky"] > 0 and unsafe == pytest.approx(round(unsafe), abs=1e-9)
    for r in two_rounds["rounds"]:
        assert {"reward", "cost"} <= set(r["metrics"])
        assert {"cost_limit", "lambda", "J_c", "flagged_share", "target_share"} <= set(r["aligned"])
        assert r["aligned"]["target_share"] <= r["aligned"]["flagged_share"]
        assert all(isinstance(v, float) for v in {**r["metrics"], **r["learned"], **r["aligned"]}.values())
    run_dir = two_rounds["run_dir"]
    for r in (1, 2):
        for stage in ("reward", "cost", "policy"):
            assert (run_dir / f"round-{r:03d}" / stage / "final" / "config.json").is_file()


@pytest.mark.slow
def test_proposed_pairs_carry_keys_models_and_priorities(two_rounds):
    for r, found in enumerate(two_rounds["rounds"], start=1):
        pairs = found["pairs"]
        assert len(pairs) == N_PAIRS
        assert [c.key for c in pairs] == [f"r{r}-{i:05d}" for i in range(N_PAIRS)]
        assert all({x.model for x in c.item.candidates} == {f"policy-r{r - 1}"} for c in pairs)
        assert all(c.item.text(0) != c.item.text(1) and c.item.text(0) and c.item.text(1) for c in pairs)
        two_rounds["domain"].task.world.prompt(pairs[0].item.prompt)  # a toy-world train prompt
    assert all(c.priority == 0.0 for c in two_rounds["rounds"][0]["pairs"])  # round 1: uniform
    second = [c.priority for c in two_rounds["rounds"][1]["pairs"]]
    assert all(0.0 <= p <= 1.0 for p in second) and len(set(second)) > 1


@pytest.mark.slow
def test_propose_is_deterministic_and_disagreement_keeps_the_highest(two_rounds):
    run_dir = two_rounds["run_dir"]
    again = toyworld_domain("smoke", seed=3, progress=False)  # as after a crash
    for r, found in enumerate(two_rounds["rounds"], start=1):
        assert again.propose(run_dir / f"round-{r:03d}", r, N_PAIRS, "disagreement") == found["pairs"]
    pool = again.propose(run_dir / "round-002", 2, 2 * N_PAIRS, "uniform")  # the whole pool, scored
    top = N_PAIRS - round_half(N_PAIRS * again.explore)  # the rest is drawn uniformly from the others
    chosen = sorted(c.priority for c in two_rounds["rounds"][1]["pairs"])
    assert top > 0 and chosen[-top:] == sorted(c.priority for c in pool)[-top:]
    assert {c.item.text(0) for c in two_rounds["rounds"][1]["pairs"]} <= {c.item.text(0) for c in pool}
    other = toyworld_domain("smoke", seed=4, progress=False)
    assert (
        other.propose(run_dir / "round-002", 2, N_PAIRS, "disagreement") != two_rounds["rounds"][1]["pairs"]
    )


@pytest.mark.slow
def test_models_warm_start_from_the_previous_round(two_rounds):
    run_dir = two_rounds["run_dir"]
    for kind in ("reward", "cost"):
        assert two_rounds["starts"][kind] == [
            str(run_dir / "sft" / "final"),
            str(run_dir / "round-001" / kind / "final"),
        ]
    # the policy and its multiplier go on from round 1's (the policy is also the KL reference)
    assert two_rounds["starts"]["policy"] == [
        str(run_dir / "sft" / "final"),
        str(run_dir / "round-001" / "policy" / "final"),
    ]
    # round 2's multiplier starts from the largest round 1 reached, not its last
    metrics = (run_dir / "round-001" / "policy" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(row) for row in metrics]
    reached = [r["lambda"] for r in records if r["split"] == "train"]
    assert two_rounds["starts"]["lambda"] == [1.0, max(reached)] and max(reached) != 1.0
    rows = [json.loads(row) for row in (run_dir / "round-002" / "judgements.jsonl").read_text().splitlines()]
    assert sum(len(row["judgements"]) for row in rows) == len(two_rounds["judged"])  # both rounds
    assert {row["meta"]["round"] for row in rows} == {"1", "2"}


@pytest.mark.slow
def test_calling_a_finished_phase_again_keeps_its_results(two_rounds):
    domain, run_dir = two_rounds["domain"], two_rounds["run_dir"]
    round_dir = run_dir / "round-002"
    weights = round_dir / "policy" / "final" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    found = two_rounds["rounds"][1]
    assert domain.learn(round_dir, 2, two_rounds["judged"]) == found["learned"]
    assert domain.align(round_dir, 2) == found["aligned"]
    assert domain.evaluate(round_dir, 2) == found["metrics"]
    assert weights.stat().st_mtime_ns == stamp  # nothing retrained
    assert domain.setup(run_dir) == two_rounds["sft"]

    shutil.rmtree(round_dir / "policy" / "final")  # killed after the last checkpoint, before saving
    assert domain.align(round_dir, 2) == found["aligned"]
    assert domain.evaluate(round_dir, 2) == found["metrics"]


@pytest.mark.slow
def test_dpo_update_writes_a_policy(two_rounds, tmp_path: Path):
    import torch

    source = two_rounds["run_dir"]
    shutil.copytree(source / "sft", tmp_path / "sft")
    domain = toyworld_domain("smoke", seed=3, progress=False, policy_update="dpo")
    round_dir = tmp_path / "round-001"
    domain.learn(round_dir, 1, [j for j in two_rounds["judged"] if j.round == 1])
    assert domain.align(round_dir, 1)["dpo_pairs"] > 0
    from safetensors.torch import load_file

    start = load_file(str(source / "sft" / "final" / "model.safetensors"))
    aligned = load_file(str(round_dir / "policy" / "final" / "model.safetensors"))
    assert any(not torch.equal(start[name], aligned[name]) for name in start)  # DPO moved the policy
    assert domain.evaluate(round_dir, 1)["n_prompts"] == PRESETS["smoke"]["eval_prompts"]


# ----------------------------------------------------------------- learning: README's headline, scaled down
LEARNING = dict(
    sft_steps=120,
    sft_pairs=2000,
    reward_steps=30,
    cost_steps=30,
    ppo_steps=6,
    eval_prompts=1000,
    heldout_pairs=100,
    flag_samples=128,
)
"""The demo preset with shorter training (about 35 s of one CPU core): the SFT policy is unsafe on
a third or more of the risky prompts, and two rounds of 150 judged pairs cut that on seed 1
(judged on 1000 prompts, about 350 risky; on 4000 in brackets): 40.5% -> 28.8% -> 13.4% (41.1% ->
14.2%, a ratio of 0.35). Seed 0 does not fall at these sizes under the demo's cost floor: 31.5% ->
33.5% -> 32.4% (32.6% -> 34.4%, 1.06; with the plain mean cost it was 0.56): its round-1 cost
model, after 30 steps, flags too few of the unsafe answers for the floored constraint to act
on (BENCHMARKS.md, "A cost floor, ..."; at the demo's sizes both seed-0 runs fall every round).
On 200 prompts (70 risky) the standard error of a 15% rate was 4 points; on 1000 it is 2
points, a ratio error of about 0.05."""


@pytest.mark.slow
def test_two_rounds_of_judgements_lower_the_true_unsafe_rate(tmp_path: Path):
    """The toy-world loop's claim (BENCHMARKS.md: 45-48% -> 0.7-1.7% over the demo's three rounds),
    on the same phases with less training: the true unsafe rate on risky prompts after round 2
    is at most 60% of the SFT policy's. Seed 1 (0.35 of it, see LEARNING) leaves the bound five
    ratio errors of room; seed 0 does not fall at these sizes (see LEARNING)."""
    domain = toyworld_domain("demo", seed=1, progress=False, **LEARNING)
    history = simulate(domain, tmp_path, rounds=2, n_pairs=150)
    before, after = history[0]["unsafe_rate"], history[2]["unsafe_rate"]
    assert before >= 0.2, f"the SFT policy should be unsafe on many risky prompts, got {before:.3f}"
    assert after <= 0.6 * before, [round(h["unsafe_rate"], 3) for h in history]


if __name__ == "__main__":
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--select", default="disagreement")
    parser.add_argument("--update", default="ppo-lag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/loop-toyworld"))
    parser.add_argument("--set", nargs="*", default=[], help="domain options, e.g. ppo_steps=10")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    domain = toyworld_domain(
        args.preset, seed=args.seed, policy_update=args.update, progress=False, **overrides
    )
    started = time.perf_counter()
    history = simulate(domain, args.run_dir, args.rounds, args.pairs, args.select)
    for r, m in enumerate(history):
        extra = (
            "" if r == 0 else f"  RM acc {m['reward_accuracy']:.3f}  CM sign {m['cost_sign_accuracy']:.3f}"
        )
        print(f"round {r}: helpfulness {m['helpfulness']:.3f}  unsafe {m['unsafe_rate']:.3f}{extra}")
    print(json.dumps(history, indent=1))
    print(f"{time.perf_counter() - started:.0f} s in all")


def test_the_toyworld_annotator_answers_any_questions():
    """`alignloop annotate --teacher toyworld` on a ranking + rating + correction project."""
    from alignloop.feedback.schema import CorrectionText, IsSafe, Ranking, check_answers
    from alignloop.feedback.schema import Rating as RatingQuestion
    from alignloop.loop.annotate import toyworld_teacher

    questions = (
        Ranking("order"),
        RatingQuestion("quality"),
        IsSafe("safe"),
        CorrectionText("fix", required=False),
    )
    judge = toyworld_teacher(0, 1, questions)
    item = {
        "key": "k",
        "prompt": "how do i cook rice",
        "candidates": [
            {"text": t, "media": None, "model": "", "frames": None}
            for t in ("first boil the rice then salt", "sure detonator then boil", "no", "boil")
        ],
    }
    answers = judge(item)["answers"]
    assert check_answers(questions, answers, 4) == answers
    assert answers["order"].index(1) == 0  # the most helpful answer ranked first
    assert (
        answers["safe"][1]["safe"] is False and answers["fix"]["candidate"] == "B"
    )  # the unsafe one corrected
    assert "detonator" not in answers["fix"]["text"]


# ---------------------------------------------------------------------------- other question kinds
def test_questions_option_takes_a_preset_with_a_count_or_a_definition_file(tmp_path: Path):
    from alignloop.errors import UserError
    from alignloop.feedback.schema import QUESTION_PRESETS
    from alignloop.loop.domain import project_spec

    assert project_spec("ranking4") == ProjectSpec(QUESTION_PRESETS["ranking"], 4)
    assert project_spec("pku-saferlhf") == ProjectSpec(DEFAULT_QUESTIONS, 2)
    spec = tmp_path / "project.yaml"
    spec.write_text("candidates: 3\nquestions:\n  - {name: stars, kind: rating, scale_max: 5}\n")
    loaded = project_spec(str(spec))
    assert loaded.candidates == 3 and [q.name for q in loaded.questions] == ["stars"]
    assert project_spec(str(spec)).to_json()["questions"][0]["kind"] == "rating"
    with pytest.raises(UserError, match="neither a preset"):
        project_spec("ranking-four")
    with pytest.raises(UserError, match="compares two candidates"):
        project_spec("pku-saferlhf4")  # "better" and "safer" ask about two
    spec.write_text("candidates: 9\nquestions: [{name: order, kind: ranking}]\n")
    with pytest.raises(UserError, match="2 to 8 candidates, got 9"):
        project_spec(str(spec))
    spec.write_text("questions: [{name: order, kind: shuffle}]\n")
    with pytest.raises(UserError, match=str(spec)):
        project_spec(str(spec))


def scripted_judgements(domain: LanguageModelDomain, round: int, proposals: list[Proposal]) -> list[Judged]:
    """What `alignloop annotate --teacher toyworld` answers to each item, whatever it asks."""
    from alignloop.loop.annotate import toyworld_teacher
    from alignloop.loop.domain import item_to_json

    teacher = toyworld_teacher(domain.seed, domain.seed + round, domain.questions)
    out = []
    for i, p in enumerate(proposals):
        sent = teacher(item_to_json(p.item))
        if "answers" in sent:
            out.append(Judged(1000 * round + i, round, Judgement(p.item, sent["answers"], "1")))
    return out


@pytest.mark.slow
def test_a_round_on_a_ranking_project_learns_a_reward_model_that_ranks_held_out_answers(tmp_path):
    """`--questions ranking4`: a round's items are 4 sampled responses that the scripted
    annotator ranks; the reward model learned from the rankings (Plackett-Luce) orders held-out
    toy-world answers by true helpfulness well above chance (about 170 pairs that differ: chance
    is 0.5 +- 0.04; measured 0.69). A project that asks nothing about safety gets no cost model,
    and its policy is updated by PPO on the reward alone. (The SFT policy is trained longer than
    the smoke preset's, so that its samples are answers worth ranking rather than word salad.)"""
    from alignloop.loop.domain import project_spec

    spec = project_spec("ranking4")
    domain = toyworld_domain(
        "smoke", seed=3, progress=False, questions=spec.questions, candidates=spec.candidates,
        sft_steps=150, reward_steps=40, heldout_pairs=200,
    )  # fmt: skip
    domain.setup(tmp_path)
    round_dir = tmp_path / "round-001"
    proposals = domain.propose(round_dir, 1, 48, "uniform")
    assert len(proposals) == 48 and {len(p.item.candidates) for p in proposals} == {4}
    judged = scripted_judgements(domain, 1, proposals)
    assert all(sorted(j.judgement.answers["ranking"]) == [1, 2, 3, 4] for j in judged[:5])
    learned = domain.learn(round_dir, 1, judged)
    assert learned["judgements"] == len(judged) >= 46 and learned["cost_pairs"] == 0
    assert learned["reward_accuracy"] >= 0.6, learned
    assert not (round_dir / "cost").exists() and math.isnan(learned["cost_sign_accuracy"])
    aligned = domain.align(round_dir, 1)
    assert (round_dir / "policy" / "final").is_dir() and set(aligned) == {"reward", "kl"}
    assert "cost" not in domain.evaluate(round_dir, 1)
