"""server errors apart from client errors; not-configured answers apart from the SLO

Revision ID: 5e2b8c1f0a47
Revises: 7c1d4e9a2b60
Create Date: 2026-12-03 18:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5e2b8c1f0a47'
down_revision = '7c1d4e9a2b60'
branch_labels = None
depends_on = None


def upgrade():
    # A constant server default lets both databases add a NOT NULL column to a table with rows (on SQLite a
    # plain ADD COLUMN, so error_minutes keeps WITHOUT ROWID).
    with op.batch_alter_table('error_minutes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('server_errors', sa.BigInteger(), server_default='0', nullable=False))
    # The minutes from before the split keep reading as they did: every error a server error (unknown split;
    # hiding a past outage as "client errors" would be the worse mistake).
    op.execute('UPDATE error_minutes SET server_errors = errors')
    with op.batch_alter_table('slo_minutes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('not_configured', sa.BigInteger(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('slo_minutes', schema=None) as batch_op:
        batch_op.drop_column('not_configured')
    with op.batch_alter_table('error_minutes', schema=None) as batch_op:
        batch_op.drop_column('server_errors')
