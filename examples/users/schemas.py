"""Request and response bodies, shared by both frameworks."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

_EMAIL = r"^[^@\s]{1,64}@[^@\s]{1,255}$"


class UserCreate(BaseModel):
    """Body of POST /users."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(pattern=_EMAIL, max_length=320)
    name: str = Field(min_length=1, max_length=200)


class UserUpdate(BaseModel):
    """Body of PATCH /users/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(None, pattern=_EMAIL, max_length=320)
    name: str | None = Field(None, min_length=1, max_length=200)


class UserOut(BaseModel):
    """A user as returned by the API (and stored in the cache)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    """One page of users; `next_offset` is null on the last page."""

    items: list[UserOut]
    limit: int
    offset: int
    next_offset: int | None
