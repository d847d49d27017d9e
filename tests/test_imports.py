"""Dependencies point one way: no module of the package imports, directly or
through others, a module that imports it back."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "resnet_jax")


def module_name(path):
    rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
    """module -> the package modules it imports anywhere in its file (also inside functions)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(PACKAGE) for f in fs if f.endswith(".py")]
    modules = {module_name(f): f for f in files}
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from pkg import module` imports the module; else the names' module
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
        graph[name] = sorted(d for d in deps if d in modules and d != name)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in graph[node]:
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "resnet_jax.training.loop" in graph["resnet_jax.reproduce.worker"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_models_and_data_know_no_trainer():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("resnet_jax.models", "resnet_jax.data")):
            assert not [d for d in deps if d.startswith(("resnet_jax.training", "resnet_jax.reproduce"))], name
        if name.startswith("resnet_jax.training"):
            assert not [d for d in deps if d.startswith("resnet_jax.reproduce")], name


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None


def test_the_in_step_augmentations_know_no_pipeline_and_pipelines_do_not_import_them():
    graph = import_graph()
    assert "resnet_jax.augment.autoaugment" in graph["resnet_jax.augment.batch"]
    for name, deps in graph.items():
        if name.startswith("resnet_jax.augment"):
            assert not [d for d in deps if d.startswith(("resnet_jax.data", "resnet_jax.models",
                                                        "resnet_jax.training", "resnet_jax.reproduce"))], name
        if name.startswith("resnet_jax.data"):
            assert not [d for d in deps if d.startswith("resnet_jax.augment")], name
