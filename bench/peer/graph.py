"""A LangGraph graph that returns a fixed string, for the peer comparison.

Loaded by the LangGraph dev server from its own virtual environment, not by
Bulkhead's.
"""

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    content: str
    answer: str


def answer(state: State) -> State:
    return {"answer": "A fixed answer from the peer graph."}


builder = StateGraph(State)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
graph = builder.compile()
