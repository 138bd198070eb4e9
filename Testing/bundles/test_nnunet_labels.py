"""nnU-Net models' labels matched to the cascade's roles by name (KiTS19, KiTS21/23 regions, TotalSegmentator)."""
import pytest

from KidneyTumorSegLib.bundles.nnunet_labels import LabelError, label_roles, parse_overrides, value_names
from KidneyTumorSegLib.findings.terminology import KIDNEY_CODE, LEFT, segments_for_names

KITS19 = {"labels": {"background": 0, "kidney": 1, "tumor": 2}}
KITS21 = {"labels": {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
          "regions_class_order": [1, 3, 2]}
# TotalSegmentator's organ task (Dataset291_TotalSegmentator_part1_organs), its published label names and values
TOTALSEG = {"labels": {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4,
                       "liver": 5, "stomach": 6, "pancreas": 7, "adrenal_gland_right": 8, "adrenal_gland_left": 9,
                       "lung_upper_lobe_left": 10, "lung_lower_lobe_left": 11, "lung_upper_lobe_right": 12,
                       "lung_middle_lobe_right": 13, "lung_lower_lobe_right": 14, "esophagus": 15, "trachea": 16,
                       "thyroid_gland": 17, "small_bowel": 18, "duodenum": 19, "colon": 20, "urinary_bladder": 21,
                       "prostate": 22, "kidney_cyst_left": 23, "kidney_cyst_right": 24}}


@pytest.mark.parametrize("dataset, region, kidney, tumor", [
    (KITS19, False, (1, 2), (2,)),          # softmax channels = label values 0, 1, 2
    (KITS21, True, (0,), (2,)),             # sigmoid regions kidney, masses, tumor: the kidney region holds masses
    (TOTALSEG, False, (2, 3, 23, 24), ()),  # both kidneys and their cysts; no tumor label
])
def test_published_label_tables_match_without_options(dataset, region, kidney, tumor):
    roles = label_roles(dataset)
    assert roles.region_based is region
    assert roles.channels["kidney"] == kidney
    assert roles.channels["tumor"] == tumor
    assert roles.has("tumor") is bool(tumor)


def test_a_model_without_a_kidney_label_is_refused_naming_its_labels():
    with pytest.raises(LabelError) as err:
        label_roles({"labels": {"background": 0, "liver": 1, "spleen": 2}})
    assert str(err.value) == ("the model has no kidney label (its labels: background (0), liver (1), spleen (2)); "
                              "give one with --labels kidney=NAME if one of them is kidney")


def test_overrides_replace_the_table_by_name_or_value():
    ds = {"labels": {"background": 0, "organ_a": 1, "lesion": 2}}
    roles = label_roles(ds, parse_overrides(["kidney=organ_a", "tumor=2"]))
    assert roles.channels == {"kidney": (1, 2), "tumor": (2,), "cyst": ()}  # kidney role = kidney + tumor
    roles = label_roles(KITS19, parse_overrides(["tumor="]))
    assert not roles.has("tumor") and roles.channels["kidney"] == (1,)
    with pytest.raises(LabelError, match="label 'liver' given for kidney is not one of the model's labels"):
        label_roles(KITS19, {"kidney": ["liver"]})
    with pytest.raises(LabelError, match="is not ROLE=NAME"):
        parse_overrides(["kidney"])
    with pytest.raises(LabelError, match="unknown role"):
        label_roles(KITS19, {"liver": ["kidney"]})


def test_value_names_follow_nnunet_region_decoding():
    assert value_names(KITS19) == {0: "background", 1: "kidney", 2: "tumor"}
    assert value_names(KITS21) == {0: "background", 1: "kidney", 3: "masses", 2: "tumor"}


def test_segments_for_a_totalsegmentator_label_map_carry_kidney_terminology():
    segs = segments_for_names(value_names(TOTALSEG))
    assert len(segs) == 24 and 0 not in segs
    assert segs[3].type == KIDNEY_CODE and segs[3].type_modifier == LEFT
    assert segs[23].anatomic_region == KIDNEY_CODE and segs[23].anatomic_region_modifier == LEFT
    assert segs[1].type == ("99KTS", "spleen", "spleen")
    assert len({s.segment_id for s in segs.values()}) == 24
