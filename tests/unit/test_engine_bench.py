"""The engine benchmark stays runnable: a small workload, both passes, no docs written."""

from bench import engine as bench_engine


def test_bench_engine_runs_a_small_workload(capsys, monkeypatch, tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(bench_engine, "DOC", doc)
    assert bench_engine.main(["--commands", "6000", "--seed-orders", "2000", "--chunk", "2000"]) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "## Engine" in text and "commands/s" in text


def test_bench_engine_replaces_only_its_own_section(monkeypatch, tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Relay\n\nrelay numbers\n\n## Engine\n\nold\n\n## HTTP\n\nhttp numbers\n")
    monkeypatch.setattr(bench_engine, "DOC", doc)
    bench_engine.write_section("## Engine\n\nnew\n")
    assert doc.read_text() == "# Benchmarks\n\n## Relay\n\nrelay numbers\n\n## Engine\n\nnew\n\n## HTTP\n\nhttp numbers\n"
