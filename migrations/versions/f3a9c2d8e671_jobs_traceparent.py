"""jobs: the W3C traceparent of the request (or job) that enqueued each job, so its run joins that trace

Revision ID: f3a9c2d8e671
Revises: d41e8a7c5b20
Create Date: 2026-12-04 21:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f3a9c2d8e671'
down_revision = 'd41e8a7c5b20'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('traceparent', sa.String(length=55), nullable=True))


def downgrade():
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('traceparent')
