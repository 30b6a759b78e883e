"""shared overrides: admin breaker actions and fault rules every process reads

Revision ID: 9e2c7d1f4a80
Revises: 9d3e5f7a1c24
Create Date: 2026-12-03 17:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9e2c7d1f4a80'
down_revision = '9d3e5f7a1c24'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('shared_overrides',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'name', name='uq_shared_overrides_kind_name')
    )


def downgrade():
    op.drop_table('shared_overrides')
