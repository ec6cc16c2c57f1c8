from .box_scheduler import BoxSchedulerOutput
from .scheduling_reflected_ode import ReflectedODEScheduler
from .scheduling_reflected_sde import ReflectedSDEScheduler
from .scheduling_thresholded_sde import ThresholdedSDEScheduler

__all__ = ["BoxSchedulerOutput", "ReflectedODEScheduler", "ReflectedSDEScheduler", "ThresholdedSDEScheduler"]
