"""Port-forwards that heal themselves: one local port, re-targeted per connection as pods come and go."""

from innerloop.forward.forward import ForwardError, ForwardEvent, ForwardStatus, PortForward
from innerloop.forward.targets import PodView, choose_pod

__all__ = ["ForwardError", "ForwardEvent", "ForwardStatus", "PodView", "PortForward", "choose_pod"]
