"""bench: a benchmark harness for personalized reward models.

Data flows one way: dataset -> split -> features -> method -> per-user rows -> metrics -> report.
Heavy dependencies (torch, transformers, vllm) are imported only inside the code that needs them,
so importing this package and running ``bench --help`` or ``bench list`` stay instant.
"""

__version__ = "0.1.0"
