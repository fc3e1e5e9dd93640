"""Request and response bodies, shared by both frameworks."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Printable ASCII but "@" on either side: the same set in every regex engine (a `\s` differs
# between Python's, Rust's and JSON Schema's, so clients and server would disagree).
_EMAIL = r"^[!-?A-~]{1,64}@[!-?A-~]{1,255}$"

# Constraints on the type, not the field: that is where both frameworks' OpenAPI output finds them.
Email = Annotated[str, StringConstraints(pattern=_EMAIL, max_length=320)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class UserCreate(BaseModel):
    """Body of POST /users. Unknown fields are ignored: that is what both frameworks' documents
    say (Litestar's cannot say `additionalProperties: false`)."""

    email: Email
    name: Name


class UserUpdate(BaseModel):
    """Body of PATCH /users/{id}: only the fields given change (null is not a value: a field
    is given or left out)."""

    # Defaults are not validated, so a field left out is None; Litestar's document would lose
    # the pattern of an `Email | None`.
    email: Email = Field(default=None)
    name: Name = Field(default=None)


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
