import sys

from .engine.cpu_allocator import keep_freed_memory
from .frontdoor.cli import main

keep_freed_memory()  # this process is a sampling engine: see cpu_allocator.py
sys.exit(main())
