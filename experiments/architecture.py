"""The project's module graph, read from the code: which promptgym module imports which, whether the layers keep
DESIGN.md's direction (`experiments -> agents -> envs -> rewards`), and a picture of it.

    python -m promptgym.experiments.architecture --out docs/images/architecture.png --calls docs/images/dataflow.png

Imports are read with `ast` from the source (nothing is imported), at module level and inside functions alike, so
an import placed inside a function cannot hide a cycle. The data-flow picture (`--calls`) is recorded, not drawn by
hand: one PPO update of a tiny agent on the tiny reward runs under `sys.setprofile`, and every call from one public
promptgym function to another becomes an arrow (task -> env -> rollout -> reward -> advantages -> update).
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib.util
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import networkx as nx

LAYERS = ("rewards", "envs", "agents", "experiments")  # bottom to top: a module may import its layer and those below
PACKAGE = "promptgym"


def package_root(layer: str) -> Path:
    """The folder of `promptgym.<layer>` (the installed package maps it to a top-level folder of the repo)."""
    spec = importlib.util.find_spec(f"{PACKAGE}.{layer}")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(f"{PACKAGE}.{layer} is not installed; run `pip install -e .` first")
    return Path(next(iter(spec.submodule_search_locations)))


def module_files() -> dict[str, Path]:
    """Every promptgym module (`promptgym.rewards.render`, packages as their `__init__`) and its file."""
    files = {}
    for layer in LAYERS:
        root = package_root(layer)
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((PACKAGE, layer, *parts))] = path
    return files


def _imported(node: ast.AST, modules: Iterable[str]) -> set[str]:
    """The promptgym modules an `import` / `from ... import` statement brings in (a name that is a module counts
    as that module, else its package)."""
    known = set(modules)
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                 for alias in node.names]
    else:
        return set()
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph() -> nx.DiGraph:
    """Directed graph module -> module it imports; each edge says whether any such import sits in a function."""
    files = module_files()
    graph = nx.DiGraph()
    for module, path in files.items():
        graph.add_node(module, layer=module.split(".")[1])
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            for target in _imported(node, files) - {module}:
                nested = id(node) not in top_level and not _in_module_block(tree, node)
                if graph.has_edge(module, target):
                    graph.edges[module, target]["nested"] |= nested
                else:
                    graph.add_edge(module, target, nested=nested)
    return graph


def _in_module_block(tree: ast.Module, node: ast.AST) -> bool:
    """True for an import inside a module-level `if`/`try` (e.g. `if TYPE_CHECKING:`), not inside a function."""
    for statement in tree.body:
        if isinstance(statement, (ast.If, ast.Try)) and any(child is node for child in ast.walk(statement)):
            return True
    return False


def _is_package_of(module: str, target: str) -> bool:
    """A package importing its own submodule, or a module importing its package (`__init__` re-exports): not a
    dependency between two ideas, so not counted in cycles."""
    return target.startswith(module + ".") or module.startswith(target + ".")


def cycles(graph: nx.DiGraph) -> list[list[str]]:
    """Import cycles between modules (package <-> own submodule edges left out), shortest first."""
    core = nx.DiGraph((a, b) for a, b in graph.edges if not _is_package_of(a, b))
    return sorted((sorted(c) for c in nx.simple_cycles(core)), key=lambda c: (len(c), c))


def layer_violations(graph: nx.DiGraph) -> list[tuple[str, str]]:
    """Edges that import a higher layer (e.g. `rewards` importing `envs`)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted((a, b) for a, b in graph.edges if rank[graph.nodes[b]["layer"]] > rank[graph.nodes[a]["layer"]])


def nested_imports(graph: nx.DiGraph) -> list[tuple[str, str]]:
    """Edges made only or also by an import inside a function (lazy imports: allowed, but listed)."""
    return sorted((a, b) for a, b, nested in graph.edges(data="nested") if nested)


# ------------------------------------------------------------------------------------------- calls
def _function_name(frame) -> str | None:
    """`layer.module.Qualified.name` of a public promptgym function's frame (None for anything else)."""
    module = frame.f_globals.get("__name__", "")
    qualname = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    if not module.startswith(f"{PACKAGE}.") or "<" in qualname:
        return None
    if any(part.startswith("_") and part != "__call__" for part in qualname.split(".")):
        return None
    return f"{module.removeprefix(PACKAGE + '.')}.{qualname}"


def record_calls(run: Callable[[], object]) -> nx.DiGraph:
    """Call graph of `run()`: an edge caller -> callee (with `count`) between public promptgym functions, through
    any private or third-party frames in between."""
    graph = nx.DiGraph()
    stack: list[tuple[int, str]] = []  # (frame id, name) of the public promptgym frames now running

    def profile(frame, event, _arg):
        if event == "call" and (name := _function_name(frame)) is not None:
            if stack:
                caller = stack[-1][1]
                count = graph.edges[caller, name]["count"] + 1 if graph.has_edge(caller, name) else 1
                graph.add_edge(caller, name, count=count)
            else:
                graph.add_node(name)
            stack.append((id(frame), name))
        elif event == "return" and stack and stack[-1][0] == id(frame):
            stack.pop()

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(previous)
    for node in graph.nodes:
        graph.nodes[node]["layer"] = node.split(".")[0]
    return graph


def tiny_update_calls(seed: int = 0) -> nx.DiGraph:
    """The call graph of one PPO update (4 episodes of 8 tokens) of the tiny policy on the tiny reward stack."""
    import torch

    from promptgym.agents import PolicyWithValue, PPOAgent, PPOConfig
    from promptgym.envs import PromptEditVectorEnv, default_tokenizer, load_tasks
    from promptgym.rewards import build_reward

    tokenizer = default_tokenizer()
    env = PromptEditVectorEnv(4, tasks=load_tasks("demo", split="train")[:16], tokenizer=tokenizer,
                              reward=build_reward("tiny", tokenizer=tokenizer, seed=seed), max_new_tokens=8,
                              autoreset_mode="disabled")
    with torch.random.fork_rng(devices=[]):
        agent = PPOAgent(PolicyWithValue.tiny(tokenizer, seed=seed), env,
                         PPOConfig(n_episodes=4, batch_size=4, n_epochs=1, seed=seed))
        return record_calls(agent.step)


def draw_calls(graph: nx.DiGraph, path: str | Path, root: str = "agents.ppo.PPOAgent.step") -> Path:
    """The call graph as a PNG, left to right by call depth from `root`, coloured by layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = nx.single_source_shortest_path_length(graph, root)
    shown = graph.subgraph(depth).copy()
    for node in shown:
        shown.nodes[node]["depth"] = depth[node]
    position = nx.multipartite_layout(shown, subset_key="depth", align="vertical", scale=6)
    colours = dict(zip(LAYERS, ("#4c72b0", "#55a868", "#c44e52", "#8172b2"), strict=True))
    height = max(collections.Counter(depth.values()).values())
    fig, ax = plt.subplots(figsize=(24, max(10, 0.8 * height)))
    nx.draw_networkx_edges(shown, position, ax=ax, alpha=0.35, arrowsize=8, width=0.7, node_size=80)
    nx.draw_networkx_nodes(shown, position, node_color=[colours[shown.nodes[n]["layer"]] for n in shown],
                           node_size=80, ax=ax)
    labels = {n: n.split(".", 1)[1] for n in shown}
    nx.draw_networkx_labels(shown, position, labels, font_size=7, ax=ax, verticalalignment="bottom")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[layer], label=layer) for layer in LAYERS]
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title(f"one PPO update, recorded: calls between public promptgym functions from {root} (left) down")
    return _save(fig, path, dpi=100)


def draw(graph: nx.DiGraph, path: str | Path) -> Path:
    """The module graph as a PNG: one column per layer (bottom layer left), an arrow per import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = nx.DiGraph()
    shown.add_nodes_from(graph.nodes(data=True))
    shown.add_edges_from((a, b) for a, b in graph.edges if not _is_package_of(a, b))
    for node in shown.nodes:
        shown.nodes[node]["column"] = LAYERS.index(shown.nodes[node]["layer"])
    position = nx.multipartite_layout(shown, subset_key="column", align="vertical", scale=4)
    colours = dict(zip(LAYERS, ("#4c72b0", "#55a868", "#c44e52", "#8172b2"), strict=True))
    height = max(sum(1 for n in shown if shown.nodes[n]["layer"] == layer) for layer in LAYERS)
    fig, ax = plt.subplots(figsize=(16, max(8, 0.42 * height)))
    nx.draw_networkx_edges(shown, position, ax=ax, alpha=0.18, arrowsize=7, width=0.6, connectionstyle="arc3,rad=0.08")
    for layer in LAYERS:
        nodes = [n for n in shown if shown.nodes[n]["layer"] == layer]
        nx.draw_networkx_nodes(shown, position, nodelist=nodes, node_color=colours[layer], node_size=60, ax=ax)
        labels = {n: n.removeprefix(f"{PACKAGE}.") for n in nodes}
        nx.draw_networkx_labels(shown, position, labels, font_size=7, ax=ax, verticalalignment="bottom")
    ax.set_title("promptgym modules: an arrow per import (left: rewards, then envs, agents, experiments)")
    return _save(fig, path, dpi=110)


def _save(fig, path: str | Path, dpi: int) -> Path:
    """Write a picture without axes to `path` (folders made) and close it."""
    import matplotlib.pyplot as plt

    fig.axes[0].axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promptgym.experiments.architecture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the module graph as a PNG here")
    parser.add_argument("--calls", type=Path, help="record one tiny PPO update and write its call graph as a PNG here")
    args = parser.parse_args(argv)
    graph = import_graph()
    print(f"{graph.number_of_nodes()} modules, {graph.number_of_edges()} imports between them")
    for title, rows in (("cycles", cycles(graph)), ("imports of a higher layer", layer_violations(graph)),
                        ("imports inside functions", nested_imports(graph))):
        print(f"{title}: {len(rows)}")
        for row in rows:
            print("  " + " -> ".join(row))
    if args.out:
        print(f"wrote {draw(graph, args.out)}")
    if args.calls:
        calls = tiny_update_calls()
        print(f"one PPO update: {calls.number_of_nodes()} public functions, {calls.number_of_edges()} caller -> callee")
        print(f"wrote {draw_calls(calls, args.calls)}")
    return 1 if cycles(graph) or layer_violations(graph) else 0


if __name__ == "__main__":
    raise SystemExit(main())
