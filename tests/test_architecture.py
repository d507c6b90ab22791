"""The layering DESIGN.md promises, checked on the code itself (promptgym.experiments.architecture)."""

import networkx as nx
import pytest

from promptgym.experiments.architecture import cycles, draw, import_graph, layer_violations, main, nested_imports


def test_no_module_imports_a_higher_layer_and_nothing_imports_in_a_circle():
    graph = import_graph()
    assert graph.number_of_nodes() > 50
    assert layer_violations(graph) == []
    assert cycles(graph) == []  # imports inside functions included: they cannot hide a cycle


def test_the_checks_find_what_they_look_for():
    graph = nx.DiGraph()
    for name in ("promptgym.rewards.a", "promptgym.envs.b", "promptgym.experiments.c", "promptgym.experiments.d"):
        graph.add_node(name, layer=name.split(".")[1])
    graph.add_edge("promptgym.rewards.a", "promptgym.envs.b", nested=False)  # upwards
    graph.add_edge("promptgym.experiments.c", "promptgym.experiments.d", nested=True)
    graph.add_edge("promptgym.experiments.d", "promptgym.experiments.c", nested=False)
    assert layer_violations(graph) == [("promptgym.rewards.a", "promptgym.envs.b")]
    assert cycles(graph) == [["promptgym.experiments.c", "promptgym.experiments.d"]]
    assert nested_imports(graph) == [("promptgym.experiments.c", "promptgym.experiments.d")]


@pytest.mark.slow
def test_main_prints_the_counts_and_draws_the_graph(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "graph.png")]) == 0
    out = capsys.readouterr().out
    assert "cycles: 0" in out and "imports of a higher layer: 0" in out
    assert (tmp_path / "graph.png").stat().st_size > 10_000
    assert draw(import_graph(), tmp_path / "again.png").exists()
