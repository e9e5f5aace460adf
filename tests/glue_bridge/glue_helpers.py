"""Helpers for the glue bridge tests."""


def box(dc, image, label="my box", roi=None):
    """A rectangle subset group (x 100..200, y 300..380 unless ``roi`` says otherwise)."""
    from glue.core.roi import RectangularROI
    from glue.core.subset import RoiSubsetState

    x, y = image.pixel_component_ids[1], image.pixel_component_ids[0]
    return dc.new_subset_group(label, RoiSubsetState(x, y, roi or RectangularROI(100, 200, 300, 380)))
