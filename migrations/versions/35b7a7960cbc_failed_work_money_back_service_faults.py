"""failed work, money back, service faults

Revision ID: 35b7a7960cbc
Revises: 6b0f5a3aa420
Create Date: 2026-12-03 09:35:14.480829

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '35b7a7960cbc'
down_revision = '6b0f5a3aa420'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('service_faults',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('service', sa.String(length=50), nullable=False),
    sa.Column('operation', sa.String(length=100), nullable=False),
    sa.Column('error_code', sa.String(length=100), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_service_faults')),
    sa.UniqueConstraint('service', 'operation', name='uq_service_faults_service_operation')
    )
    op.create_table('unapplied_payments',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=255), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('object_id', sa.String(length=255), nullable=True),
    sa.Column('reason_code', sa.String(length=64), nullable=False),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('amount_cents', sa.Integer(), nullable=True),
    sa.Column('currency', sa.String(length=8), nullable=True),
    sa.Column('event', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('errors', sa.JSON(), server_default=sa.text("'[]'"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('discarded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('discard_reason', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_unapplied_payments')),
    sa.UniqueConstraint('event_id', name=op.f('uq_unapplied_payments_event_id'))
    )
    with op.batch_alter_table('unapplied_payments', schema=None) as batch_op:
        batch_op.create_index('ix_unapplied_payments_status', ['status', 'created_at'], unique=False)

    op.create_table('credit_purchases',
    sa.Column('session_id', sa.String(length=255), nullable=False),
    sa.Column('payment_intent', sa.String(length=255), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('pack', sa.String(length=50), nullable=False),
    sa.Column('credits', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('clawed_back', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_credit_purchases_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', name=op.f('pk_credit_purchases')),
    sa.UniqueConstraint('payment_intent', name=op.f('uq_credit_purchases_payment_intent'))
    )
    with op.batch_alter_table('credit_purchases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credit_purchases_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('credit_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('debt', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_check_constraint(op.f('ck_credit_accounts_debt_non_negative'), 'debt >= 0')

    with op.batch_alter_table('credit_entries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('debt_change', sa.Integer(), server_default='0', nullable=False))

    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('possible_duplicates', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('errors', sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
        batch_op.add_column(sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('discarded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('discard_reason', sa.String(length=500), nullable=True))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('archive_reason', sa.String(length=500), nullable=True))

    with op.batch_alter_table('storage_pending_sync', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='pending', nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('errors', sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
        batch_op.add_column(sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('discarded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('discard_reason', sa.String(length=500), nullable=True))
        batch_op.create_index('ix_storage_pending_sync_due', ['status', 'next_attempt_at'], unique=False)

    # Files already uploaded were recorded by synced_at only.
    op.execute("UPDATE storage_pending_sync SET status = 'synced' WHERE synced_at IS NOT NULL")


def downgrade():
    with op.batch_alter_table('storage_pending_sync', schema=None) as batch_op:
        batch_op.drop_index('ix_storage_pending_sync_due')
        batch_op.drop_column('discard_reason')
        batch_op.drop_column('discarded_at')
        batch_op.drop_column('failed_at')
        batch_op.drop_column('errors')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('status')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('archive_reason')

    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.drop_column('discard_reason')
        batch_op.drop_column('discarded_at')
        batch_op.drop_column('failed_at')
        batch_op.drop_column('errors')
        batch_op.drop_column('possible_duplicates')

    with op.batch_alter_table('credit_entries', schema=None) as batch_op:
        batch_op.drop_column('debt_change')

    with op.batch_alter_table('credit_accounts', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_credit_accounts_debt_non_negative'), type_='check')
        batch_op.drop_column('debt')

    with op.batch_alter_table('credit_purchases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credit_purchases_user_id'))

    op.drop_table('credit_purchases')
    with op.batch_alter_table('unapplied_payments', schema=None) as batch_op:
        batch_op.drop_index('ix_unapplied_payments_status')

    op.drop_table('unapplied_payments')
    op.drop_table('service_faults')
