"""admin proof on users: verified at/via, credentials changed at

Revision ID: 7c1d4e9a2b60
Revises: 35b7a7960cbc
Create Date: 2026-12-03 14:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c1d4e9a2b60'
down_revision = '35b7a7960cbc'
branch_labels = None
depends_on = None


def upgrade():
    # batch mode: SQLite cannot ALTER TABLE ADD COLUMN with every option; this works on both databases.
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('admin_verified_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('admin_verified_via', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('credentials_changed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('credentials_changed_at')
        batch_op.drop_column('admin_verified_via')
        batch_op.drop_column('admin_verified_at')
