"""Log streams that follow a service's pods through restarts and replacements, printed with a colour per service."""

from innerloop.logs.follower import LogFollower
from innerloop.logs.lines import LogLine, color_index, format_line

__all__ = ["LogFollower", "LogLine", "color_index", "format_line"]
