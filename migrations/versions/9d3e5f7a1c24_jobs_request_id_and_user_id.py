"""jobs: the originating request id and user id (tracing a failed job back to the request)

Revision ID: 9d3e5f7a1c24
Revises: 5e2b8c1f0a47
Create Date: 2026-12-03 17:45:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9d3e5f7a1c24'
down_revision = '5e2b8c1f0a47'
branch_labels = None
depends_on = None


def upgrade():
    # batch mode: SQLite cannot ALTER TABLE ADD COLUMN with every option; this works on both databases.
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('user_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_request_id'), ['request_id'], unique=False)


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_request_id'))
        batch_op.drop_column('user_id')
        batch_op.drop_column('request_id')
