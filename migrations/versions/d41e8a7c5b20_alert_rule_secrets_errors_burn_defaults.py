"""alert rules: signing secret, last evaluation error, the SRE workbook's burn-rate rules by default

Revision ID: d41e8a7c5b20
Revises: 9e2c7d1f4a80
Create Date: 2026-12-03 17:50:00.000000

"""
import secrets
from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd41e8a7c5b20'
down_revision = '9e2c7d1f4a80'
branch_labels = None
depends_on = None

# The Google SRE workbook's multiwindow burn-rate alerts, as ordinary rules (an admin edits, disables or
# deletes them like any other; a deleted one stays deleted: this runs once). No channels: they fire into the
# admin notifications and app.log until an admin adds PagerDuty, a webhook or an email address.
# `min_requests` keeps a handful of failures on an idle server from paging (the workbook's low-traffic caveat).
DEFAULT_RULES = (
    ("slo-burn-page-1h", 3600, 300, 14.4, "CRITICAL"),
    ("slo-burn-page-6h", 6 * 3600, 1800, 6.0, "CRITICAL"),
    ("slo-burn-ticket-3d", 3 * 86400, 6 * 3600, 1.0, "MEDIUM"),
)


def upgrade():
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signing_secret', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=True))

    rules = sa.table(
        'alert_rules',
        sa.column('name', sa.String), sa.column('kind', sa.String), sa.column('params', sa.JSON),
        sa.column('channels', sa.JSON), sa.column('severity', sa.String), sa.column('cooldown_seconds', sa.Integer),
        sa.column('enabled', sa.Boolean), sa.column('state', sa.String), sa.column('notified', sa.Boolean),
        sa.column('version', sa.Integer), sa.column('signing_secret', sa.String),
        sa.column('created_at', sa.DateTime(timezone=True)), sa.column('updated_at', sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    bind = op.get_bind()
    existing = {}
    for rule_id, name in bind.execute(sa.text('SELECT id, name FROM alert_rules')):
        existing[name] = rule_id
        # Rules from before signing get a secret too (an admin reads it with rotate-secret).
        bind.execute(
            sa.text('UPDATE alert_rules SET signing_secret = :secret WHERE id = :id'),
            {'secret': 'whsec_' + secrets.token_hex(24), 'id': rule_id},
        )
    op.bulk_insert(rules, [
        {
            'name': name, 'kind': 'slo_burn',
            'params': {'group': '*', 'long_seconds': long, 'short_seconds': short, 'factor': factor,
                       'min_requests': 50},
            'channels': [], 'severity': severity, 'cooldown_seconds': 300, 'enabled': True, 'state': 'ok',
            'notified': False, 'version': 0, 'signing_secret': 'whsec_' + secrets.token_hex(24),
            'created_at': now, 'updated_at': now,
        }
        for name, long, short, factor, severity in DEFAULT_RULES
        if name not in existing
    ])


def downgrade():
    op.execute(sa.text(
        "DELETE FROM alert_rules WHERE name IN ('slo-burn-page-1h', 'slo-burn-page-6h', 'slo-burn-ticket-3d')"
    ))
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.drop_column('last_error')
        batch_op.drop_column('signing_secret')
