"""vzcpt: checkpoint and restore of Linux process trees and containers, in user space."""

__version__ = "0.1.0"
