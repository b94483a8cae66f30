"""Items get an optional key, unique per project, so pushing the same item twice adds it once.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 07:20:00

Every step is plain DDL on SQLite as well (ADD COLUMN of a nullable column, CREATE UNIQUE
INDEX, DROP COLUMN), so the items table is never copied and its expression index (priority DESC)
is kept as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("key", sa.String(length=128), nullable=True))
    op.create_index("uq_items_project_key", "items", ["project_id", "key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_items_project_key", table_name="items")
    op.drop_column("items", "key")  # native on SQLite >= 3.35: the table (and its indexes) stay
