"""graph.json: the model (`Graph`, `Task`), loading and validation (`load_graph`); globbing lives in inputs.py."""

from gaffer.graph.load import load_graph
from gaffer.graph.model import Graph, Task

__all__ = ["Graph", "Task", "load_graph"]
