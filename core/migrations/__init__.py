"""Alembic migrations wired to the dualcore settings and the models' metadata.

    dualcore db init migrations --metadata app.models:Base.metadata
    dualcore db revision --autogenerate -m "add users"
    dualcore db upgrade

The same operations are functions here (`init`, `revision`, `upgrade`...), and
`await upgrade_to_head(db_manager)` migrates from application start-up.
"""

from core.migrations.commands import (
    check,
    current,
    downgrade,
    history,
    revision,
    upgrade,
    upgrade_to_head,
)
from core.migrations.config import (
    DEFAULT_CONFIG_FILE,
    METADATA_OPTION,
    MigrationError,
    init,
    load_config,
    load_metadata,
    make_config,
    parse_metadata_ref,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "METADATA_OPTION",
    "MigrationError",
    "check",
    "current",
    "downgrade",
    "history",
    "init",
    "load_config",
    "load_metadata",
    "make_config",
    "parse_metadata_ref",
    "revision",
    "upgrade",
    "upgrade_to_head",
]
