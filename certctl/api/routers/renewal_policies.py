"""/api/v1/renewal-policies"""

from certctl.api.crud import crud_router
from certctl.domain.models.renewal_policies import RenewalPolicy, RenewalPolicyCreate, RenewalPolicyUpdate

router = crud_router(
    prefix="/api/v1/renewal-policies", tag="RenewalPolicies", service=lambda s: s.renewal_policies,
    model=RenewalPolicy, create_model=RenewalPolicyCreate, update_model=RenewalPolicyUpdate,
)
