"""Sub-commands of the `kbundle` command, one module each."""
