"""The framework-agnostic part of the example: model, schemas, repository and service."""

from examples.users.models import User
from examples.users.repository import UserRepository
from examples.users.schemas import UserCreate, UserOut, UserPage, UserUpdate
from examples.users.service import UserService

__all__ = [
    "User",
    "UserCreate",
    "UserOut",
    "UserPage",
    "UserRepository",
    "UserService",
    "UserUpdate",
]
