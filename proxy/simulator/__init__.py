"""A local simulator of Genesys Cloud's login service and API, for tests, demos and benchmarks."""

from proxy.simulator.cli import main
from proxy.simulator.directory import blob_content
from proxy.simulator.model import ResourceLimit, SeenRequest, SimClient
from proxy.simulator.server import GenesysSimulator

__all__ = ["GenesysSimulator", "ResourceLimit", "SeenRequest", "SimClient", "blob_content", "main"]
