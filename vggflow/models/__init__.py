"""Flow models behind the :class:`~vggflow.models.base.FlowModel` protocol."""
