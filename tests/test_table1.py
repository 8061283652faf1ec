"""The cross-task table of benchmarks/table1.py: its test of the paper's claims, its copy of the paper's values, and
the table it writes from the runs recorded beside each task's report."""

import os
import re

import pytest

from benchmarks import compare, table1
from conftest import ROOT


def test_welch_confirms_refutes_or_leaves_unseparated_on_hand_made_seeds():
    ahead = table1.welch([10.0, 11.0, 12.0], [0.0, 1.0, 2.0])
    # difference 10; each mean's variance 1/3, so t = 10 / sqrt(2/3) and df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4
    assert ahead.difference == pytest.approx(10.0)
    assert ahead.t == pytest.approx(10 / (2 / 3) ** 0.5) and ahead.df == pytest.approx(4.0)
    assert (ahead.word, ahead.ahead, ahead.pairs) == ("confirmed", 9, 9)
    behind = table1.welch([0.0, 1.0, 2.0], [10.0, 11.0, 12.0])
    assert (behind.word, behind.ahead) == ("refuted", 0) and behind.t == pytest.approx(-ahead.t)
    close = table1.welch([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert close.word == "not separated" and close.difference == pytest.approx(-0.5) and close.ahead == 3
    # with df 4 the bar is 2.776, not the normal's 1.96: t = 2.45 is not separated, t = 3.06 is
    assert table1.welch([2.0, 3.0, 4.0], [0.0, 1.0, 2.0]).word == "not separated"
    assert table1.welch([2.5, 3.5, 4.5], [0.0, 1.0, 2.0]).word == "confirmed"
    assert table1.welch([5.0], [1.0, 2.0]).word == "fewer than 2 seeds"
    assert table1.welch([], [1.0, 2.0]).word == "no finished run"
    assert table1.welch([2.0, 2.0], [2.0, 2.0]).word == "not separated"
    assert table1.welch([3.0, 3.0], [2.0, 2.0]).word == "confirmed"


def test_welch_degrees_of_freedom_with_unequal_variances_and_seed_counts():
    # variances of the means 5/3/4 and 2/2; Welch-Satterthwaite: (17/12)^2 / ((5/12)^2/3 + 1^2/1)
    verdict = table1.welch([1.0, 2.0, 3.0, 4.0], [2.0, 4.0])
    assert verdict.t == pytest.approx(-0.5 / (17 / 12) ** 0.5)
    assert verdict.df == pytest.approx((17 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 1.0))
    assert verdict.word == "not separated"


def test_the_critical_value_rounds_the_degrees_of_freedom_down():
    assert table1.critical_t(2.9) == 4.303 and table1.critical_t(3.0) == 3.182
    assert table1.critical_t(0.5) == 12.706 and table1.critical_t(500.0) == 1.960
    # Welch's test rounds its df down: t = 8.8 at df 1.9 uses df 1's bar (12.7), not df 2's (4.3), and separates nothing
    verdict = table1.welch([10.0, 11.0, 12.0, 13.0], [0.0, 2.0])
    assert 1 < verdict.df < 2 and 4.303 < verdict.t < 12.706 and verdict.word == "not separated"


def test_the_readme_quotes_the_papers_table_1_as_the_script_holds_it():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## The paper's Table 1", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("\n| "):].split("\n\n", 1)[0]  # the section's first table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header == ["environment"] + [compare.METHODS[m][0] for m in table1.PAPER["Reacher"]]
    quoted = {}
    for row in rows[1:]:
        cells = [c.strip().strip("*").replace("−", "-") for c in row.strip("|").split("|")]
        quoted[cells[0]] = {m: tuple(float(x) for x in re.fullmatch(r"(\S+) ± (\S+)", c).groups())
                            for m, c in zip(table1.PAPER["Reacher"], cells[1:])}
    assert quoted == table1.PAPER
    assert list(table1.PAPER) == list(table1.TASKS)


def record(docs, task: str, returns: dict[str, list[float]]) -> None:
    """A task's record of runs as compare.py writes it, with one final return per seed of each method."""
    runs = {f"{method}/seed{seed}": {"args": {"seed": seed}, "finished": True,
                                     "evaluations": [{"return": value, "global_step": 6000, "train_time": 60.0}]}
            for method, values in returns.items() for seed, value in enumerate(values, 1)}
    compare.record(os.path.join(docs, f"{table1.TASKS[task].report}_runs.json"), runs)


def test_the_table_reads_every_tasks_record_between_its_bounds_and_judges_each_claim(tmp_path):
    docs = tmp_path / "docs"
    record(docs, "HalfCheetah-Vel", {"oracle": [-100.0, -100.0, -100.0], "no-inference": [-300.0, -300.0, -300.0],
                                     "dynamite": [-190.0, -200.0, -210.0], "varibad": [-290.0, -280.0, -270.0],
                                     "rl2": [-110.0, -120.0, -130.0], "contrabar": [-150.0, -250.0, -200.0]})
    record(docs, "ScratchItch", {"dynamite": [1.0, 2.0], "varibad": [0.0, 1.0, 2.0]})
    args = table1.Args(tasks=["HalfCheetah-Vel", "ScratchItch", "Reacher"], report_only=True, docs=str(docs),
                       runs_root=str(tmp_path / "runs"))
    table1.main(args)
    text = (docs / "table1.md").read_text()
    assert (docs / "table1.png").exists()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.split("## Final return")[1].split("##")[0]
            .splitlines() if line.startswith("| ")}
    assert "| -200.0 ± 8.2 (50%) |" in rows["HalfCheetah-Vel"]  # halfway from -300 to -100
    assert "| -280.0 ± 8.2 (10%) |" in rows["HalfCheetah-Vel"]
    assert rows["ScratchItch"].count("not run") == 1  # ContraBAR is not a method of that task
    assert "1.5 ± 0.5 [2 of 3 seeds]" in rows["ScratchItch"]
    assert rows["Reacher"].count("–") == 6  # nothing recorded
    assert list(rows)[2:] == list(table1.TASKS)  # (after the header) a row for every task, not only those trained
    claims = {line.split(" | ")[0].strip("| "): line for line in text.split("## The paper's claim")[1].splitlines()
              if line.startswith("| ")}
    cells = [c.strip() for c in claims["HalfCheetah-Vel"].strip("|").split("|")]
    assert cells[1].startswith("refuted: -80.0") and "ahead in 0/9 pairs" in cells[1]  # RL² is ahead
    assert cells[2].startswith("not separated: +0.0")  # ContraBAR: the same mean
    assert cells[3].startswith("confirmed: +80.0") and "ahead in 9/9 pairs" in cells[3]  # over VariBAD
    assert cells[4] == "refuted"
    assert "| ScratchItch | no finished run | not run | not separated" in text
    assert "RL² > DynaMITE-RL > ContraBAR > VariBAD" in text or "RL² > ContraBAR > DynaMITE-RL > VariBAD" in text
    assert "on each side: 1 confirmed, 1 refuted, 2 not separated." in text


def test_unknown_tasks_are_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="unknown tasks.*HalfCheetah-Vel"):
        table1.main(table1.Args(tasks=["HalfCheetah"], report_only=True))
