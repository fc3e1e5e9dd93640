"""The example's one table."""

from __future__ import annotations

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.models import Base, TimestampMixin, UUIDPrimaryKeyMixin


class User(UUIDPrimaryKeyMixin, TimestampMixin, Base):
    """A user with a unique email."""

    __tablename__ = "users"
    # Deferred: a duplicate is detected at COMMIT, which is exactly where a careless adapter
    # would already have answered 201.
    __table_args__ = (UniqueConstraint("email", deferrable=True, initially="DEFERRED"),)

    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
